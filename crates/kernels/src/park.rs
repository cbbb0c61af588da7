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
