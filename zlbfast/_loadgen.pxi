# Load generator and test backends (see csrc/loadgen.h, csrc/testbackend.h).
