# Thin wrapper over CMake: `make`, `make test`, `make demo`, `make install`.
BUILD ?= build
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
PREFIX ?= /usr/local
CMAKE_FLAGS ?=

.PHONY: all configure deps test demo install bench clean

all: configure
	cmake --build $(BUILD) -j $(JOBS)

configure:
	@test -f $(BUILD)/CMakeCache.txt || cmake -S . -B $(BUILD) -DCMAKE_INSTALL_PREFIX=$(PREFIX) $(CMAKE_FLAGS)

# Test dependencies: Debian packages (apt-get, as root) and the pinned Python venv $(BUILD)/venv
# (tests/requirements.txt: PyTorch 2.13, the reference); see scripts/deps.sh.
deps:
	scripts/deps.sh $(BUILD)

# deps first (it may install libpng-dev, which the configure step looks for), then build and test.
test: deps
	$(MAKE) all
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

demo: all
	./$(BUILD)/mha demo

install: all
	cmake --install $(BUILD) --prefix $(PREFIX)

bench:
	scripts/deps.sh $(BUILD) --bench
	$(MAKE) all
	BUILD=$(BUILD) bench/compare.sh

clean:
	rm -rf $(BUILD)
