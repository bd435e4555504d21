"""The lock: requirements.txt pins, exactly, everything requirements.in asks for (make lock)."""

from __future__ import annotations

from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def requirements(path: Path) -> list[Requirement]:
    found = []
    for line in path.read_text().splitlines():
        line = line.split(" #")[0].strip()
        if line and not line.startswith(("#", "-")):
            found.append(Requirement(line))
    return found


def test_the_lock_pins_every_direct_requirement_within_its_range():
    pins = {canonicalize_name(r.name): r for r in requirements(ROOT / "requirements.txt")}
    for wanted in requirements(ROOT / "requirements.in"):
        pin = pins.get(canonicalize_name(wanted.name))
        assert pin is not None, f"{wanted.name} is not in requirements.txt: run `make lock`"
        (spec,) = pin.specifier
        assert spec.operator == "==", f"{pin}: the lock must pin exactly"
        assert wanted.specifier.contains(spec.version, prereleases=True), (
            f"requirements.txt has {pin}, outside requirements.in's {wanted}: run `make lock`")
        assert str(wanted.marker) == str(pin.marker), f"{wanted.name}: markers differ"


def test_every_pin_is_exact():
    for pin in requirements(ROOT / "requirements.txt"):
        assert [s.operator for s in pin.specifier] == ["=="], pin
