# Set up (idempotent) and serve the bundled demo model on :9337, console on :3131.
run *ARGS:
    bash bundle/setup.sh demo {{ARGS}}

# Set up (idempotent) and run the whole test suite.
test *ARGS:
    bash bundle/setup.sh test {{ARGS}}

# Build a portable offline bundle under dist/.
bundle:
    bash bundle/make-bundle.sh
