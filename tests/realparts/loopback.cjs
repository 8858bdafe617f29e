'use strict';
// Preload for `node -r`: a server's listen() that names no host binds 127.0.0.1 instead of
// every interface. Learning Locker's xapi-statements calls `app.listen(port, cb)`, which
// Node would bind to `::`/0.0.0.0; the tests want nothing reachable from outside.
// Explicit hosts, Unix socket paths, file descriptors and handles are left alone.
const net = require('net');

const LOOPBACK = '127.0.0.1';
const originalListen = net.Server.prototype.listen;

function isPort(value) {
  return typeof value === 'number' || (typeof value === 'string' && /^\d+$/.test(value));
}

net.Server.prototype.listen = function listen(...args) {
  const first = args[0];
  if (args.length === 0 || typeof first === 'function') {
    // listen() / listen(callback): a random port.
    args.unshift(0, LOOPBACK);
  } else if (first === undefined || first === null || isPort(first)) {
    // listen(port[, host][, backlog][, callback]): host is a string when given.
    if (typeof args[1] !== 'string') {
      args.splice(1, 0, LOOPBACK);
    }
  } else if (
    typeof first === 'object' &&
    !('_handle' in first) &&
    first.path === undefined &&
    first.fd === undefined &&
    first.host === undefined
  ) {
    // listen(options[, callback]) with a port (or none) and no host.
    args[0] = { ...first, host: LOOPBACK };
  }
  return originalListen.apply(this, args);
};
