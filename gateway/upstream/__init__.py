"""Talking to an upstream LRS: the lean HTTP/1.1 client and the storage LRS client."""
