int run_pci_tests(const char *c) { (void)c; return 0; }
