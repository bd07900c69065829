// Network guard for webtorrent-cli runs: refuse (and report on stderr as "wt-local: BLOCKED ...") any
// TCP connect, UDP send or DNS lookup that is not for a loopback address; servers that name no host
// (the torrent port, the CLI's HTTP server) listen on 127.0.0.1. WT_GUARD_LOG=1 logs allowed connects.
'use strict'
const net = require('net'), dgram = require('dgram'), dns = require('dns')
function isLoopback (host) {
  if (host == null || host === '') return true // node's default for connect() is localhost
  host = String(host).replace(/^\[|\]$/g, '').replace(/^::ffff:/i, '')
  return host === 'localhost' || host === '::1' || /^127\./.test(host)
}
function blocked (what, host, port) {
  const msg = `wt-local: BLOCKED ${what} to ${host}:${port}`
  process.stderr.write(msg + '\n')
  return new Error(msg)
}
const origConnect = net.Socket.prototype.connect
net.Socket.prototype.connect = function (...args) {
  let o = args[0]; if (Array.isArray(o)) o = o[0] // internal normalized form
  let host, port
  if (o && typeof o === 'object') { if (o.path) return origConnect.apply(this, args); host = o.host; port = o.port } else { port = args[0]; host = typeof args[1] === 'string' ? args[1] : undefined }
  if (!isLoopback(host)) { const err = blocked('tcp connect', host, port); process.nextTick(() => this.destroy(err)); return this }
  if (process.env.WT_GUARD_LOG) process.stderr.write(`wt-local: tcp connect ${host}:${port}\n`)
  return origConnect.apply(this, args)
}
const origListen = net.Server.prototype.listen
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'number' || (typeof args[0] === 'string' && /^\d+$/.test(args[0]))) {
    if (typeof args[1] !== 'string') args.splice(1, 0, '127.0.0.1')
  } else if (args[0] && typeof args[0] === 'object' && args[0].path == null && args[0].host == null) {
    args[0] = Object.assign({}, args[0], { host: '127.0.0.1' })
  }
  return origListen.apply(this, args)
}
const origSend = dgram.Socket.prototype.send
dgram.Socket.prototype.send = function (msg, ...rest) {
  // send(msg[, offset, length], port[, address][, callback])
  const nums = rest.filter(a => typeof a === 'number'), addr = rest.find(a => typeof a === 'string')
  const port = nums.length >= 3 ? nums[2] : nums[0]
  if (!isLoopback(addr)) { const err = blocked('udp send', addr, port); const cb = rest.find(a => typeof a === 'function'); if (cb) process.nextTick(cb, err); return }
  return origSend.call(this, msg, ...rest)
}
const origLookup = dns.lookup
dns.lookup = function (hostname, ...rest) {
  if (!isLoopback(hostname) && net.isIP(hostname) === 0) {
    const err = blocked('dns lookup', hostname, '-'); err.code = 'ENOTFOUND'
    const cb = rest.find(a => typeof a === 'function'); if (cb) process.nextTick(cb, err); return {}
  }
  return origLookup.call(this, hostname, ...rest)
}
