// What webtorrent-cli gets for `import WebTorrent from 'webtorrent'` (see hooks.mjs): the real
// WebTorrent (its URL is in ?real=), subclassed to force DHT, trackers, LSD, uTP, web seeds and
// NAT-UPnP/PMP off (works for webtorrent 1.x, CommonJS, and 3.x, ESM). WT_PEERS="h:p,h:p" adds
// those peers to each torrent as soon as its info hash is known (how a .torrent download gets a peer).
// WT_SECURE=0|1|2 sets webtorrent 3.x's protocol encryption (MSE/PE; its default is 1, which still
// opens every outgoing connection with an MSE handshake); unset leaves the version's default.
const real = new URL(import.meta.url).searchParams.get('real')
const { default: WebTorrent } = await import(real)
const peers = (process.env.WT_PEERS || '').split(',').map(s => s.trim()).filter(Boolean)
export default class LocalWebTorrent extends WebTorrent {
  constructor (opts = {}) {
    const secure = process.env.WT_SECURE != null && process.env.WT_SECURE !== '' ? { secure: Number(process.env.WT_SECURE) } : {}
    super({ ...opts, ...secure, dht: false, tracker: false, lsd: false, utp: false, webSeeds: false, natUpnp: false, natPmp: false })
    process.stderr.write(`wt-local: webtorrent ${WebTorrent.VERSION} dht=${!!this.dht} tracker=${!!this.tracker} lsd=${this.lsd} utp=${this.utp} webSeeds=${this.enableWebSeeds} nat=${!!this.natTraversal} secure=${this.secure ?? '-'} torrentPort=${this.torrentPort}${peers.length ? ' peers=' + peers.join(',') : ''}\n`)
    this.on('listening', () => { const a = this.address(); process.stderr.write(`wt-local: listening on TCP ${a && a.address}:${a && a.port}\n`) })
  }

  add (torrentId, opts, ontorrent) {
    const torrent = super.add(torrentId, opts, ontorrent)
    if (peers.length && torrent) {
      const addAll = () => peers.forEach(p => { process.stderr.write(`wt-local: addPeer ${p}\n`); torrent.addPeer(p) })
      if (torrent.infoHash) addAll(); else torrent.once('infoHash', addAll)
    }
    return torrent
  }
}
