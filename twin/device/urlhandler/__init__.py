"""pyserial URL handlers of our own (pyserial's ``protocol_handler_packages`` mechanism): looked up
before pyserial's, so ``socket://`` opens :mod:`.protocol_socket`; every other scheme falls through to
pyserial's handlers."""
