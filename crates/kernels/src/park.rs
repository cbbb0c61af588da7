//! Parking a tensor in host memory while the device works on (Unsloth's "offloaded gradient
//! checkpointing"): per-block checkpointing keeps every block's input between the forward and
//! the backward, 28 × 32 MiB = 0.88 GiB for GPT-J-6B at 8 × 512 in bf16, though each is read
//! once, by its block's recompute. Parked, only the inputs of the blocks being computed stay on
//! the device.
//!
//! A parked tensor goes through [`park`] (a copy to host memory starts, off the compute stream:
//! it overlaps the work enqueued after it), [`Parked::settle`] (its device buffer goes back to
//! the pool, the pool's next user ordered after that copy: no host wait), [`Parked::prefetch`]
//! (a copy back into a fresh device buffer starts, again off the compute stream) and
//! [`Parked::take`] (the compute stream waits for that copy; the tensor is returned). Every step
//! is optional but `take`, which does what was skipped. Values come back bit for bit.
//!
//! Backends without an off-device copy (the default [`QBackend::q_park`], NdArray) keep the
//! tensor where it is, so the caller is the same everywhere; CUDA parks it (`cuda/park.rs`).

use burn::tensor::{backend::Backend, ops::FloatTensor, Tensor, TensorPrimitive};

use crate::QBackend;

/// A tensor's copy in host memory, as a backend that parks keeps it (see the module docs for
/// the order of the calls).
pub trait HostCopy<B: Backend>: Send {
    /// Lets the device buffer go once the copy to the host is ordered before its next use.
    fn settle(&mut self);
    /// Starts the copy back into a fresh device buffer (settling first if needed).
    fn prefetch(&mut self);
    /// The tensor on the device again, the compute stream ordered after its copy back.
    fn take(self: Box<Self>) -> FloatTensor<B>;
}

/// Where [`QBackend::q_park`] put a tensor.
pub enum Place<B: Backend> {
    /// Still on the device (a backend without an off-device copy).
    Device(FloatTensor<B>),
    /// In host memory, or on its way there.
    Host(Box<dyn HostCopy<B>>),
}

/// A `D`-dimensional tensor parked by [`park`], or kept on the device by [`Parked::keep`].
pub struct Parked<B: Backend, const D: usize> {
    place: Place<B>,
}

/// Starts parking `x` in host memory (see the module docs); on a backend without an off-device
/// copy `x` stays where it is.
pub fn park<B: QBackend, const D: usize>(x: Tensor<B, D>) -> Parked<B, D> {
    Parked {
        place: B::q_park(x.into_primitive().tensor()),
    }
}

impl<B: Backend, const D: usize> Parked<B, D> {
    /// `x` kept on the device, behind the same interface.
    pub fn keep(x: Tensor<B, D>) -> Self {
        Self {
            place: Place::Device(x.into_primitive().tensor()),
        }
    }

    /// Whether the tensor was parked off the device (not kept).
    pub fn is_parked(&self) -> bool {
        matches!(self.place, Place::Host(_))
    }

    /// See [`HostCopy::settle`]; nothing for a kept tensor.
    pub fn settle(&mut self) {
        if let Place::Host(h) = &mut self.place {
            h.settle();
        }
    }

    /// See [`HostCopy::prefetch`]; nothing for a kept tensor.
    pub fn prefetch(&mut self) {
        if let Place::Host(h) = &mut self.place {
            h.prefetch();
        }
    }

    /// The tensor, on the device, bit for bit as parked.
    pub fn take(self) -> Tensor<B, D> {
        let p = match self.place {
            Place::Device(t) => t,
            Place::Host(h) => h.take(),
        };
        Tensor::from_primitive(TensorPrimitive::Float(p))
    }
}

/// The bytes from a tensor's first element to just past its last when its layout is dense but
/// for padding at the end of each row: the row-major strides of `shape` with the row stride
/// (`strides[rank - 2]`) at least the row's width. cubecl lays out fresh CUDA tensors so, rows
/// padded to up to 512 bytes (a hidden size of 576 in bf16 has rows of 1,152 bytes and a pitch of
/// 1,536); a contiguous layout is the case without padding. Dimensions of size 1 take any stride.
/// `None` for any other layout (a transposed or sliced view) or no elements.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))] // used by cuda/park.rs
pub(crate) fn padded_rows_span(
    shape: &[usize],
    strides: &[usize],
    elem_bytes: usize,
) -> Option<usize> {
    if strides.len() != shape.len() || shape.contains(&0) {
        return None;
    }
    // Size-1 dimensions are never stepped over: the layout is that of the others.
    let (shape, strides): (Vec<usize>, Vec<usize>) =
        shape.iter().zip(strides).filter(|(&n, _)| n > 1).unzip();
    let Some((&width, outer)) = shape.split_last() else {
        return Some(elem_bytes); // one element
    };
    let rank = shape.len();
    let pitch = if rank == 1 { width } else { strides[rank - 2] };
    if strides[rank - 1] != 1 || pitch < width {
        return None;
    }
    // Row-major above the rows: each stride the next one times the next size.
    let mut want = pitch;
    for i in (0..rank.saturating_sub(2)).rev() {
        want *= shape[i + 1];
        if strides[i] != want {
            return None;
        }
    }
    let rows: usize = outer.iter().product();
    Some(((rows - 1) * pitch + width) * elem_bytes)
}

/// Host memory for parked tensors, handed out by address arithmetic alone (the backend
/// allocates and frees the chunks): one step parks its block inputs in order and takes them all
/// back, so each chunk is a bump allocator that starts over once nothing in it is live. A step
/// that does not fit adds a chunk as large as the largest (or the request); the next step that
/// starts on an idle arena of several chunks replaces them with one as large as all of them. So
/// steps of any shapes (variable-length batches) reuse the same memory, which stays under twice
/// the largest step's parked bytes (plus one minimum chunk), instead of one buffer per shape
/// ever seen.
#[derive(Debug, Default)]
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) struct Arena {
    chunks: Vec<Chunk>,
}

#[derive(Debug)]
struct Chunk {
    base: usize,
    cap: usize,
    top: usize,
    live: usize,
}

impl Chunk {
    /// `need` bytes at the top of the chunk (from its start once nothing in it is live), if
    /// they fit.
    fn bump(&mut self, need: usize) -> Option<usize> {
        if self.live == 0 {
            self.top = 0;
        }
        (self.top + need <= self.cap).then(|| {
            self.top += need;
            self.live += 1;
            self.base + self.top - need
        })
    }
}

/// What an [`Arena`] needs from the memory behind it.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) trait ChunkAlloc {
    /// A fresh chunk of `bytes` bytes; its address.
    fn alloc(&mut self, bytes: usize) -> Result<usize, String>;
    /// Frees the chunks at these addresses (nothing reads or writes them any more once this
    /// returns: a backend with copies in flight waits for them first).
    fn free(&mut self, bases: &[usize]) -> Result<(), String>;
}

#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
impl Arena {
    /// Alignment of every allocation (bytes).
    pub(crate) const ALIGN: usize = 512;
    /// The smallest chunk (bytes).
    pub(crate) const MIN_CHUNK: usize = 16 << 20;

    /// The address of `bytes` bytes, live until [`Arena::free`].
    pub(crate) fn alloc(
        &mut self,
        bytes: usize,
        mem: &mut impl ChunkAlloc,
    ) -> Result<usize, String> {
        let need = bytes.max(1).next_multiple_of(Self::ALIGN);
        if self.chunks.len() > 1 && self.chunks.iter().all(|c| c.live == 0) {
            let cap = self.capacity();
            let bases: Vec<usize> = self.chunks.drain(..).map(|c| c.base).collect();
            mem.free(&bases)?;
            self.grow(cap, mem)?;
        }
        if let Some(p) = self.chunks.iter_mut().find_map(|c| c.bump(need)) {
            return Ok(p);
        }
        let largest = self.chunks.iter().map(|c| c.cap).max().unwrap_or(0);
        self.grow(need.max(largest).max(Self::MIN_CHUNK), mem)?;
        Ok(self
            .chunks
            .last_mut()
            .and_then(|c| c.bump(need))
            .expect("a fresh chunk holds the request"))
    }

    /// Gives back an address [`Arena::alloc`] returned (0: nothing). Its memory is reused
    /// once every allocation of its chunk is given back.
    pub(crate) fn free(&mut self, p: usize) {
        if let Some(c) = self
            .chunks
            .iter_mut()
            .find(|c| (c.base..c.base + c.cap).contains(&p))
        {
            c.live = c.live.saturating_sub(1);
        }
    }

    /// Bytes held in chunks.
    pub(crate) fn capacity(&self) -> usize {
        self.chunks.iter().map(|c| c.cap).sum()
    }

    fn grow(&mut self, cap: usize, mem: &mut impl ChunkAlloc) -> Result<(), String> {
        let base = mem.alloc(cap)?;
        self.chunks.push(Chunk {
            base,
            cap,
            top: 0,
            live: 0,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn padded_rows_span_takes_dense_and_row_padded_layouts() {
        use super::padded_rows_span as span;
        // Contiguous: every byte.
        assert_eq!(
            span(&[4, 256, 1024], &[256 * 1024, 1024, 1], 2),
            Some(4 * 256 * 1024 * 2)
        );
        // cubecl's pitched rows: 1000 bf16 (2000 bytes) padded to 2048; the last row unpadded.
        assert_eq!(
            span(&[2, 77, 1000], &[77 * 1024, 1024, 1], 2),
            Some((153 * 1024 + 1000) * 2)
        );
        // A hidden size of 576 in bf16: rows of 1152 bytes at a pitch of 1536.
        assert_eq!(span(&[3, 576], &[768, 1], 2), Some((2 * 768 + 576) * 2));
        // Size-1 dimensions take any stride; a vector and a scalar.
        assert_eq!(span(&[1, 5, 8], &[7, 8, 1], 4), Some(160));
        assert_eq!(span(&[2, 1, 8], &[16, 3, 1], 4), Some((16 + 8) * 4));
        assert_eq!(span(&[6], &[1], 2), Some(12));
        assert_eq!(span(&[], &[], 2), Some(2));
        // Not dense by rows: transposed, a column slice (row stride below the width), a gap
        // between outer blocks, a strided last dimension, no elements, mismatched ranks.
        assert_eq!(span(&[4, 8], &[1, 4], 2), None);
        assert_eq!(span(&[4, 8], &[6, 1], 2), None);
        assert_eq!(span(&[2, 3, 8], &[32, 8, 1], 2), None);
        assert_eq!(span(&[4, 8], &[16, 2], 2), None);
        assert_eq!(span(&[0, 8], &[8, 1], 2), None);
        assert_eq!(span(&[4, 8], &[8], 2), None);
    }

    use super::{Arena, ChunkAlloc};

    /// Chunks at made-up, far-apart addresses; records what is live.
    #[derive(Default)]
    struct Fake {
        next: usize,
        live: Vec<(usize, usize)>,
    }

    impl ChunkAlloc for Fake {
        fn alloc(&mut self, bytes: usize) -> Result<usize, String> {
            self.next += 1 << 40;
            self.live.push((self.next, bytes));
            Ok(self.next)
        }
        fn free(&mut self, bases: &[usize]) -> Result<(), String> {
            self.live.retain(|(b, _)| !bases.contains(b));
            Ok(())
        }
    }

    /// One step: park `sizes` in order, give them back in reverse (the backward), and check
    /// that no two live ranges overlap.
    fn step(arena: &mut Arena, mem: &mut Fake, sizes: &[usize]) {
        let mut got: Vec<(usize, usize)> = Vec::new();
        for &s in sizes {
            let p = arena.alloc(s, mem).unwrap();
            assert!(
                got.iter().all(|&(q, n)| p + s <= q || q + n <= p),
                "{p} overlaps"
            );
            assert!(mem.live.iter().any(|&(b, c)| b <= p && p + s <= b + c));
            got.push((p, s));
        }
        for (p, _) in got.into_iter().rev() {
            arena.free(p);
        }
    }

    #[test]
    fn variable_steps_reuse_one_chunk_of_bounded_size() {
        let (mut arena, mut mem) = (Arena::default(), Fake::default());
        let mb = 1 << 20;
        // 26 block inputs a step, 8 × T × 4096 bf16, T from 96 to 512 and back.
        let mut biggest = 0;
        for t in (96..=512).step_by(8).chain((96..=512).rev().step_by(24)) {
            let sizes = vec![8 * t * 4096 * 2; 26];
            biggest = biggest.max(sizes.iter().sum::<usize>());
            step(&mut arena, &mut mem, &sizes);
            assert!(arena.capacity() <= 2 * biggest + Arena::MIN_CHUNK, "{t}");
        }
        // After growing, the next idle step consolidates: one chunk serves every later step.
        step(&mut arena, &mut mem, &[mb]);
        assert_eq!(mem.live.len(), 1);
        let cap = arena.capacity();
        for t in [512, 96, 300] {
            step(&mut arena, &mut mem, &vec![8 * t * 4096 * 2; 26]);
        }
        assert_eq!((mem.live.len(), arena.capacity()), (1, cap));
    }

    #[test]
    fn out_of_order_and_dropped_allocations_are_reused() {
        let (mut arena, mut mem) = (Arena::default(), Fake::default());
        let a = arena.alloc(1000, &mut mem).unwrap();
        let b = arena.alloc(3000, &mut mem).unwrap();
        assert_eq!(b, a + 1024);
        arena.free(a);
        // `b` is live: the chunk does not start over.
        let c = arena.alloc(10, &mut mem).unwrap();
        assert_eq!(c, b + 3072);
        arena.free(b);
        arena.free(c);
        assert_eq!(arena.alloc(10, &mut mem).unwrap(), a);
        arena.free(0); // nothing
    }
}
