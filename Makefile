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

# Installs missing test dependencies (as root, with apt-get and npm); see scripts/deps.sh.
deps:
	scripts/deps.sh

test: deps all
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

demo: all
	./$(BUILD)/mha demo

install: all
	cmake --install $(BUILD) --prefix $(PREFIX)

bench: all
	bench/compare.sh

clean:
	rm -rf $(BUILD)
