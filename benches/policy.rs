//! Control-path hot spots: a choker round over 1000 peers (seeding and
//! tit-for-tat), and a tracker's request path (decoding a BEP 15 announce
//! packet, and recording it in a swarm table of 1000 swarms).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringseed_engine::policy::choker::{Candidate, Choker, ChokerConfig, LeechChoker};
use ringseed_engine::policy::swarm::{PeerRequest, SwarmTable};
use ringseed_engine::proto::tracker::{Announce, Event, UdpRequest};
use ringseed_engine::InfoHash;

const PEERS: u64 = 1000;

fn candidates() -> Vec<Candidate> {
    (0..PEERS)
        .map(|key| Candidate {
            key,
            interested: key % 5 != 0,
            unchoked: key % 3 == 0,
            served_since_unchoke: key * 7919 % 50_000_000,
            since: Duration::from_secs(key % 120),
            received: key * 104_729 % 10_000_000,
        })
        .collect()
}

fn chokers(c: &mut Criterion) {
    let peers = candidates();
    let mut group = c.benchmark_group("choker round, 1000 peers");
    group.throughput(Throughput::Elements(PEERS));
    group.bench_function("seeding (round robin, 50 slots)", |b| {
        let mut choker = Choker::new(ChokerConfig {
            upload_slots: 50,
            ..ChokerConfig::default()
        });
        let mut n = 0usize;
        b.iter(|| {
            n += 1;
            choker.rechoke(Duration::from_secs(n as u64), &peers, &mut |k| n % k)
        })
    });
    group.bench_function("leeching (tit-for-tat, 8 slots)", |b| {
        let mut choker = LeechChoker::new(8);
        let mut n = 0usize;
        b.iter(|| {
            n += 1;
            choker.rechoke(Duration::from_secs(n as u64), &peers, &mut |k| n % k)
        })
    });
    group.finish();
}

fn announce(i: u64) -> Announce {
    let mut peer_id = [0u8; 20];
    peer_id[..8].copy_from_slice(&i.to_le_bytes());
    Announce {
        info_hash: InfoHash(ringseed_engine::hash::sha1(&(i % 1000).to_le_bytes())),
        peer_id,
        port: 6881,
        uploaded: 0,
        downloaded: 0,
        left: i % 2,
        event: Event::Started,
        numwant: Some(50),
        key: i as u32,
        tracker_id: None,
    }
}

fn tracker(c: &mut Criterion) {
    let packets: Vec<Vec<u8>> = (0..10_000u64)
        .map(|i| {
            let mut out = Vec::new();
            UdpRequest::Announce {
                connection_id: 0x41727101980,
                transaction_id: i as u32,
                announce: announce(i),
            }
            .encode(&mut out);
            out
        })
        .collect();
    let mut group = c.benchmark_group("tracker request path, 10k announces");
    group.throughput(Throughput::Elements(packets.len() as u64));
    group.bench_function("decode UDP announce packets", |b| {
        b.iter(|| {
            packets
                .iter()
                .filter(|p| UdpRequest::decode(p).is_ok())
                .count()
        })
    });
    let announces: Vec<Announce> = (0..10_000u64).map(announce).collect();
    group.bench_function(
        "record in a swarm table of 1000 swarms (50 peers back)",
        |b| {
            let mut table = SwarmTable::default();
            let mut n = 0u64;
            b.iter(|| {
                for (i, a) in announces.iter().enumerate() {
                    n += 1;
                    let addr =
                        SocketAddr::new(IpAddr::V4(Ipv4Addr::from((n % 100_000) as u32)), 6881);
                    let request = PeerRequest {
                        numwant: Some(50),
                        ipv6: Some(false),
                        start: i,
                    };
                    table.announce(
                        a.info_hash,
                        addr,
                        a.event,
                        a.left,
                        request,
                        Duration::from_secs(n / 10_000),
                    );
                }
            })
        },
    );
    group.finish();
}

criterion_group!(benches, chokers, tracker);
criterion_main!(benches);
