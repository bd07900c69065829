//! A simulated network: thousands of [`Dht`] state machines with a fake
//! clock, datagrams routed in memory with random latency and loss.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use super::*;

/// A datagram on the simulated wire: delivery time, sequence (to keep the
/// order exact), receiver index, sender address, bytes.
type Flight = Reverse<(Duration, u64, usize, SocketAddr, Vec<u8>)>;

struct Sim {
    nodes: Vec<Dht>,
    addrs: Vec<SocketAddr>,
    index: HashMap<SocketAddr, usize>,
    in_flight: BinaryHeap<Flight>,
    now: Duration,
    rng: u64,
    seq: u64,
    loss_per_mille: u64,
    events: Vec<(usize, Event)>,
    delivered: u64,
}

/// Every node its own public /24.
fn sim_addr(i: usize) -> SocketAddr {
    let i = i as u32;
    SocketAddr::new(
        IpAddr::from([20 + (i >> 16) as u8, (i >> 8) as u8, i as u8, 1]),
        6881,
    )
}

impl Sim {
    fn new(loss_per_mille: u64) -> Self {
        Sim {
            nodes: Vec::new(),
            addrs: Vec::new(),
            index: HashMap::new(),
            in_flight: BinaryHeap::new(),
            now: Duration::from_secs(1),
            rng: 0x5eed,
            seq: 0,
            loss_per_mille,
            events: Vec::new(),
            delivered: 0,
        }
    }

    /// Adds a node with a BEP 42 id for its address, bootstrapping from
    /// node 0 (if there is one).
    fn join(&mut self) -> usize {
        let i = self.nodes.len();
        let addr = sim_addr(i);
        let id = node_id::random_id_for_ip(addr.ip(), &mut self.rng);
        let mut d = Dht::new(Config::default(), id, self.now, rng::next(&mut self.rng));
        if i > 0 {
            d.bootstrap(self.now, &[self.addrs[0]]);
        }
        self.nodes.push(d);
        self.addrs.push(addr);
        self.index.insert(addr, i);
        self.collect(i);
        i
    }

    /// Moves node `i`'s datagrams onto the wire and its events aside.
    fn collect(&mut self, i: usize) {
        while let Some(t) = self.nodes[i].poll_transmit() {
            if rng::next(&mut self.rng) % 1000 < self.loss_per_mille {
                continue;
            }
            let Some(&to) = self.index.get(&t.to) else {
                continue;
            };
            let latency = Duration::from_millis(10 + rng::next(&mut self.rng) % 90);
            self.seq += 1;
            self.in_flight.push(Reverse((
                self.now + latency,
                self.seq,
                to,
                self.addrs[i],
                t.bytes,
            )));
        }
        while let Some(e) = self.nodes[i].poll_event() {
            self.events.push((i, e));
        }
    }

    /// Runs the network for `d`, ticking every node once a simulated
    /// second (staggered).
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        let step = Duration::from_millis(50);
        let mut round = 0usize;
        while self.now < end {
            self.now += step;
            round += 1;
            while let Some(Reverse((at, ..))) = self.in_flight.peek() {
                if *at > self.now {
                    break;
                }
                let Reverse((_, _, to, from, bytes)) = self.in_flight.pop().expect("peeked");
                self.nodes[to].receive(self.now, from, &bytes);
                self.delivered += 1;
                self.collect(to);
            }
            for i in (round % 20..self.nodes.len()).step_by(20) {
                self.nodes[i].tick(self.now);
                self.collect(i);
            }
        }
    }

    fn take_events(&mut self) -> Vec<(usize, Event)> {
        std::mem::take(&mut self.events)
    }
}

#[test]
fn a_network_of_two_thousand_nodes_finds_the_announcer() {
    let mut sim = Sim::new(30);
    sim.join();
    // 2,000 nodes join through node 0, 50 a second.
    for _ in 1..2000 {
        sim.join();
        if sim.nodes.len() % 5 == 0 {
            sim.run(Duration::from_millis(100));
        }
    }
    sim.run(Duration::from_secs(60));

    // Bootstrap from one node filled every table.
    let sizes: Vec<usize> = sim.nodes.iter().map(|d| d.routing_table().len()).collect();
    let min = *sizes.iter().min().unwrap();
    let mean = sizes.iter().sum::<usize>() / sizes.len();
    assert!(min >= 16, "smallest table {min}");
    assert!(mean >= 40, "mean table {mean}");
    let last = sim.nodes.last().unwrap();
    assert!(last.routing_table().len() >= 16);
    assert!(last.routing_table().bucket_count() >= 6);

    // Node 1234 announces; node 77, far from it, then looks the torrent up.
    let ih = InfoHash(crate::hash::sha1(b"a torrent"));
    let now = sim.now;
    let announcer = 1234;
    let lid = sim.nodes[announcer].announce(now, ih, 51413, false, true);
    sim.collect(announcer);
    sim.run(Duration::from_secs(30));
    let announced = sim
        .take_events()
        .into_iter()
        .find_map(|(i, e)| match e {
            Event::AnnounceDone {
                lookup,
                info_hash,
                nodes_announced,
            } if i == announcer && lookup == lid && info_hash == ih => Some(nodes_announced),
            _ => None,
        })
        .expect("the announce finished");
    assert!(announced >= 5, "announced to {announced}");

    let seeker = 77;
    let now = sim.now;
    let lid = sim.nodes[seeker].get_peers(now, ih);
    sim.collect(seeker);
    sim.run(Duration::from_secs(30));
    let events = sim.take_events();
    let found: Vec<SocketAddr> = events
        .iter()
        .filter_map(|(i, e)| match e {
            Event::Peers { lookup, peers, .. } if *i == seeker && *lookup == lid => {
                Some(peers.clone())
            }
            _ => None,
        })
        .flatten()
        .collect();
    let expected = SocketAddr::new(sim.addrs[announcer].ip(), 51413);
    assert!(found.contains(&expected), "found {found:?}");
    assert!(events.iter().any(|(i, e)| *i == seeker
        && matches!(e, Event::LookupDone { lookup, nodes_replied, .. } if *lookup == lid && *nodes_replied >= K)));

    // The whole network stayed within its packet budget: nobody's send
    // queue overflowed, and lookups were bounded.
    let stats: Vec<DhtStats> = sim.nodes.iter().map(|d| d.stats()).collect();
    assert_eq!(stats.iter().map(|s| s.queries_dropped).sum::<u64>(), 0);
    let s = &stats[seeker];
    assert!(s.queries_out_get_peers <= lookup::MAX_QUERIES as u64);
    assert_eq!(stats.iter().map(|s| s.dropped_malformed).sum::<u64>(), 0);
}

#[test]
fn a_restarted_node_rejoins_from_its_saved_table_alone() {
    let mut sim = Sim::new(0);
    for _ in 0..300 {
        sim.join();
        sim.run(Duration::from_millis(100));
    }
    sim.run(Duration::from_secs(30));
    let saved = SavedTable::decode(&sim.nodes[150].save()).unwrap();
    assert!(saved.nodes.len() >= 16);
    // Restart node 150 with no bootstrap router at all.
    let now = sim.now;
    let mut d = Dht::restore(Config::default(), &saved, now, 77);
    d.tick(now);
    assert_eq!(d.id(), sim.nodes[150].id());
    sim.nodes[150] = d;
    sim.collect(150);
    sim.run(Duration::from_secs(60));
    let d = &sim.nodes[150];
    let confirmed = d
        .routing_table()
        .entries()
        .filter(|e| e.last_reply.is_some())
        .count();
    assert!(confirmed >= 16, "{confirmed}");
}
