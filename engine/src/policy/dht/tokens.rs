//! Stateless `get_peers` tokens (BEP 5): a token is a hash of a secret and
//! the requester's IP address, so we need not remember whom we gave one.
//! The secret changes every [`ROTATION`]; tokens made with the current or
//! the previous secret are accepted, so a token lives 5 to 10 minutes.

use std::net::IpAddr;
use std::time::Duration;

use crate::hash::Sha1Hasher;
use crate::rng;

/// How often the secret changes.
pub const ROTATION: Duration = Duration::from_secs(5 * 60);

/// Bytes of SHA-1 kept in a token: enough that guessing is hopeless, small
/// enough to keep replies short.
pub const TOKEN_LEN: usize = 8;

/// The current and previous secrets.
#[derive(Debug, Clone)]
pub struct Tokens {
    current: [u8; 16],
    previous: [u8; 16],
    rotated_at: Duration,
}

fn secret(rng_state: &mut u64) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[..8].copy_from_slice(&rng::next(rng_state).to_le_bytes());
    s[8..].copy_from_slice(&rng::next(rng_state).to_le_bytes());
    s
}

fn make(secret: &[u8; 16], ip: IpAddr) -> [u8; TOKEN_LEN] {
    let mut h = Sha1Hasher::new();
    h.update(secret);
    match ip {
        IpAddr::V4(ip) => h.update(&ip.octets()),
        IpAddr::V6(ip) => h.update(&ip.octets()),
    }
    let digest = h.finish();
    let mut token = [0u8; TOKEN_LEN];
    token.copy_from_slice(&digest[..TOKEN_LEN]);
    token
}

impl Tokens {
    /// Fresh secrets at `now`.
    pub fn new(now: Duration, rng_state: &mut u64) -> Self {
        Tokens {
            current: secret(rng_state),
            previous: secret(rng_state),
            rotated_at: now,
        }
    }

    /// Rotates the secret if [`ROTATION`] has passed since the last time.
    pub fn rotate_if_due(&mut self, now: Duration, rng_state: &mut u64) {
        if now.saturating_sub(self.rotated_at) >= ROTATION {
            self.previous = self.current;
            self.current = secret(rng_state);
            self.rotated_at = now;
        }
    }

    /// When the next rotation is due.
    pub fn next_rotation(&self) -> Duration {
        self.rotated_at + ROTATION
    }

    /// The token to hand to a requester at `ip`.
    pub fn token(&self, ip: IpAddr) -> [u8; TOKEN_LEN] {
        make(&self.current, ip)
    }

    /// Whether `token` was handed to `ip` by us within the last one or two
    /// rotations.
    pub fn check(&self, ip: IpAddr, token: &[u8]) -> bool {
        token == make(&self.current, ip) || token == make(&self.previous, ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_survives_one_rotation_but_not_two() {
        let mut state = 42;
        let ip: IpAddr = "203.0.113.9".parse().unwrap();
        let mut tokens = Tokens::new(Duration::ZERO, &mut state);
        let t = tokens.token(ip);
        assert!(tokens.check(ip, &t));
        assert!(!tokens.check("203.0.113.10".parse().unwrap(), &t));
        assert!(!tokens.check(ip, &t[..4]));

        tokens.rotate_if_due(Duration::from_secs(299), &mut state);
        assert!(tokens.check(ip, &t), "no rotation before 5 minutes");
        tokens.rotate_if_due(ROTATION, &mut state);
        assert!(tokens.check(ip, &t), "previous secret still accepted");
        tokens.rotate_if_due(ROTATION * 2, &mut state);
        assert!(!tokens.check(ip, &t), "two rotations ago is refused");
    }
}
