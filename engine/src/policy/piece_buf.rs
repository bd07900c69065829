//! A downloaded piece's bytes in memory, aligned for direct I/O.
//!
//! A piece is assembled (or read from a web seed) into one of these, hashed,
//! and written. Its start is aligned to [`PieceBuf::ALIGN`], so a piece
//! whose place in its file is aligned too can be written with `O_DIRECT`,
//! straight from this memory to the disk, without the copy into the page
//! cache that costs more CPU than anything else in a download (see
//! docs/ARCHITECTURE.md, Decisions). A `Vec<u8>` cannot promise alignment:
//! it is freed with an alignment of 1, so it must be allocated with one.

use std::alloc::{alloc_zeroed, dealloc, handle_alloc_error, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// Zeroed bytes, owned, whose start is aligned to [`PieceBuf::ALIGN`].
pub struct PieceBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: a `PieceBuf` owns its allocation exclusively, as a `Vec<u8>`
// does; `&PieceBuf` only gives `&[u8]`.
unsafe impl Send for PieceBuf {}
// SAFETY: as above: shared references allow reads only.
unsafe impl Sync for PieceBuf {}

impl PieceBuf {
    /// The alignment of the start: a page, which is also a multiple of
    /// every block device's logical block size that `O_DIRECT` asks for.
    pub const ALIGN: usize = 4096;

    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> Self {
        if len == 0 {
            // No allocation: an aligned, non-null, never dereferenced
            // pointer, as `NonNull::dangling` is for a `Vec`.
            let ptr = NonNull::new(Self::ALIGN as *mut u8).expect("non-zero");
            return PieceBuf { ptr, len };
        }
        let layout = Self::layout(len);
        // SAFETY: `layout` has a non-zero size (`len > 0`).
        let raw = unsafe { alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            handle_alloc_error(layout)
        };
        PieceBuf { ptr, len }
    }

    /// A copy of `bytes`.
    pub fn copy_of(bytes: &[u8]) -> Self {
        let mut buf = PieceBuf::zeroed(bytes.len());
        buf.copy_from_slice(bytes);
        buf
    }

    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len, Self::ALIGN).expect("a piece is far below isize::MAX")
    }
}

impl Deref for PieceBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` initialized (zeroed, then written
        // through `&mut`) bytes owned by `self`, or `len` is 0 and `ptr` is
        // non-null and aligned, which an empty slice needs.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for PieceBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for PieceBuf {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: allocated in `zeroed` with this very layout, and
            // freed once, here.
            unsafe { dealloc(self.ptr.as_ptr(), Self::layout(self.len)) };
        }
    }
}

impl Clone for PieceBuf {
    fn clone(&self) -> Self {
        PieceBuf::copy_of(self)
    }
}

impl std::fmt::Debug for PieceBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PieceBuf({} bytes)", self.len)
    }
}

impl PartialEq for PieceBuf {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for PieceBuf {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_aligned_and_owned() {
        for len in [0, 1, 16 << 10, (4 << 20) + 3] {
            let mut buf = PieceBuf::zeroed(len);
            assert_eq!(buf.len(), len);
            assert_eq!(buf.as_ptr() as usize % PieceBuf::ALIGN, 0);
            assert!(buf.iter().all(|&b| b == 0));
            if len > 0 {
                buf[len - 1] = 7;
                let copy = buf.clone();
                assert_eq!(copy, buf);
                assert_eq!(copy[len - 1], 7);
            }
        }
        assert_eq!(&*PieceBuf::copy_of(b"abc"), b"abc");
    }
}
