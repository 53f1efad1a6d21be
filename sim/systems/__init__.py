"""The storage systems the simulator compares on one topology and workload."""
