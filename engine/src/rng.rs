//! Randomness for the engine: seeds from the kernel, and one small xorshift
//! generator for decisions that must be cheap and spread well but need not
//! be unpredictable (piece picking, optimistic unchokes, tracker order,
//! load patterns). Policy code takes the generator as an argument, so its
//! tests choose the sequence.

/// A random u64 from the kernel (`getrandom`), to seed generators and make
/// ids.
pub fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: getrandom writes at most `buf.len()` bytes into `buf`.
    unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    u64::from_ne_bytes(buf)
}

/// Fills `buf` from the kernel's random source (`getrandom`, or
/// `/dev/urandom` where a seccomp profile refuses it): for secrets such as
/// an MSE private key.
///
/// # Panics
///
/// If neither gives randomness: nothing secret can be made then.
pub fn fill_random(buf: &mut [u8]) {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: getrandom writes at most `buf.len() - done` bytes at that
        // offset of `buf`.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n > 0 {
            done += n as usize;
            continue;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        use std::io::Read;
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut buf[done..]))
            .unwrap_or_else(|e| panic!("no randomness: getrandom: {err}; /dev/urandom: {e}"));
        return;
    }
}

/// A new generator state seeded by the kernel (never zero, which xorshift
/// cannot leave).
pub fn seeded() -> u64 {
    random_u64() | 1
}

/// The next value of the xorshift64 generator `state`.
pub fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// A value below `n` (0 when `n` is 0).
pub fn next_below(state: &mut u64, n: usize) -> usize {
    (next(state) % n.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_stay_below_the_bound_and_vary() {
        let mut state = 0x1234_5678_9abc_def1;
        let values: Vec<usize> = (0..1000).map(|_| next_below(&mut state, 10)).collect();
        assert!(values.iter().all(|&v| v < 10));
        for digit in 0..10 {
            assert!(values.contains(&digit), "{digit} never drawn");
        }
        assert_eq!(next_below(&mut state, 0), 0);
        assert_ne!(seeded(), 0);
    }
}
