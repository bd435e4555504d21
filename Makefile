# The two commands a reader needs: `make book` and `make test`. Both bootstrap .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_WORKERS ?= 2
STUDENT_OFFSET ?= 1   # make test-seeds: the exercise notebooks run at this seed offset,
CHAPTER_OFFSET ?= 2   # and the chapters (solutions included) at this one
SWEEP ?= 0-9          # make sweep: the offsets it runs each notebook at

# The Korean edition's own build folder (its pages are copied to _build/html/ko), and the
# message extraction's (Sphinx keeps the gettext builder's environment apart from the HTML's);
# both read the execution cache of the English build through a config with absolute paths.
KO     := _build/ko
MSGS   := _build/messages

.PHONY: book book-ko messages gettext notebooks lock test test-seeds sweep data browser-test bench budget \
	serve lint clean

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

data: $(STAMP)  ## make Fashion-MNIST available (verified by SHA-256)
	$(BIN)/python -m bnlib.data fashion-mnist

book: data  ## build both editions, executing every chapter once; warnings are errors
	BNLIB_PROGRESS=summary $(BIN)/jupyter-book build . -W -n --keep-going
	$(MAKE) --no-print-directory book-ko
	@echo "The book is at $(CURDIR)/_build/html/index.html, in Korean at _build/html/ko/"

book-ko: $(STAMP)  ## the Korean edition, from the outputs `make book` cached; fails on a stale catalog
	$(MAKE) --no-print-directory messages
	$(BIN)/python book/_ext/catalogs.py check $(MSGS)/_build/gettext
	mkdir -p $(KO) && $(BIN)/python book/_ext/editions.py ko > $(KO)/_config.yml
	BNLIB_PROGRESS=summary $(BIN)/jupyter-book build . --config $(KO)/_config.yml \
		--path-output $(KO) -W -n --keep-going
	rm -rf _build/html/ko && cp -a $(KO)/_build/html _build/html/ko

messages: $(STAMP)  # the English messages, as .pot files under $(MSGS)/_build/gettext
	mkdir -p $(MSGS) && $(BIN)/python book/_ext/editions.py en > $(MSGS)/_config.yml
	$(BIN)/jupyter-book build . --config $(MSGS)/_config.yml --path-output $(MSGS) \
		--builder custom --custom-builder gettext -W -n --keep-going

gettext: $(STAMP)  ## merge the English messages into locale/ko (new: untranslated, changed: fuzzy)
	$(MAKE) --no-print-directory messages
	$(BIN)/python book/_ext/catalogs.py update $(MSGS)/_build/gettext
	$(BIN)/python -m bnlib.check._i18n update
	@echo "Translate the empty and fuzzy entries in locale/ko and bnlib/locale/ko, then run"
	@echo "  $(BIN)/python book/_ext/catalogs.py lint && $(BIN)/python -m bnlib.check._i18n compile"

lock: $(STAMP)  ## resolve requirements.in into the exact pins of requirements.txt
	$(BIN)/pip-compile -q --no-strip-extras --no-emit-index-url --no-emit-find-links \
		--output-file requirements.txt requirements.in
	# torch: pin the version without the "+cpu" label of a CPU wheel found on disk, so
	# that PyPI (which has no such label) satisfies the pin too
	sed -i.bak 's/^torch==\(.*\)+cpu$$/torch==\1/' requirements.txt && rm requirements.txt.bak

notebooks: $(STAMP)  ## regenerate notebooks/ (student + solutions, English and Korean); commit them
	BOOK_NOTEBOOKS_DIR=$(CURDIR)/notebooks $(BIN)/jupyter-book build . -W -n --keep-going \
		--path-output $(CURDIR)/_build/notebooks-only
	mkdir -p $(KO) && $(BIN)/python book/_ext/editions.py ko > $(KO)/_config.yml
	BOOK_NOTEBOOKS_DIR=$(CURDIR)/notebooks/ko $(BIN)/jupyter-book build . --config $(KO)/_config.yml \
		-W -n --keep-going --path-output $(CURDIR)/_build/notebooks-only-ko

test: data  ## unit, property and checker tests, then every chapter once (outputs kept for `make book`)
	$(BIN)/python -m pytest tests --ignore=tests/browser -m "not shifted" -n $(PYTEST_WORKERS) \
		--dist loadscope
	$(BIN)/python tests/execute_chapters.py --jobs $(PYTEST_WORKERS)

test-seeds: data  ## every chapter's code again at two shifted seed offsets (the claim rule)
	@echo "== every exercise notebook, stubs untouched, at BNLIB_SEED_OFFSET=$(STUDENT_OFFSET)"
	BNLIB_SEED_OFFSET=$(STUDENT_OFFSET) $(BIN)/python -m pytest tests/test_student_notebooks.py \
		-q -p no:cacheprovider -m shifted -n $(PYTEST_WORKERS) --dist load
	@echo "== every chapter, solutions included, at BNLIB_SEED_OFFSET=$(CHAPTER_OFFSET)"
	BNLIB_SEED_OFFSET=$(CHAPTER_OFFSET) $(BIN)/python -m pytest book -q -p no:cacheprovider \
		--nbval-lax --nbval-current-env -n $(PYTEST_WORKERS) --dist loadscope

sweep: data  ## each notebook at seed offsets $(SWEEP): failures, seconds, peak memory
	$(BIN)/python tests/notebook_budget.py --offsets $(SWEEP) --cores 1 --jobs 2

browser-test: $(STAMP)  ## after `make book`: every page in Chromium (apt-get install chromium)
	$(BIN)/python -m pytest tests/browser

bench: $(STAMP)  ## time BN implementations; bandwidth vs the machine's copy bandwidth
	$(BIN)/python -m bnlib.bench

budget: $(STAMP)  ## time each notebook and measure its peak memory (2 cores)
	$(BIN)/python tests/notebook_budget.py --cores 2

serve: ## preview the built book at http://localhost:8000
	$(BIN)/python -m http.server --directory _build/html 8000

lint: $(STAMP)
	$(BIN)/ruff check bnlib tests book
	$(BIN)/nbstripout --keep-id --verify book/*.ipynb

clean:
	rm -rf _build .pytest_cache .hypothesis .ruff_cache locale/*/LC_MESSAGES/book/*.mo
