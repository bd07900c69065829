// Preload for webtorrent-cli in ringseed's interop tests (tests/interop_webtorrent.rs):
//   node --import tests/support/webtorrent/register.mjs PREFIX/node_modules/webtorrent-cli/bin/cmd.js ...
// guard.cjs keeps every connection on loopback; hooks.mjs hands the CLI local.mjs's WebTorrent.
import { register } from 'node:module'
import './guard.cjs'
register('./hooks.mjs', import.meta.url)
