//! The loop's [`SegmentedLm`] for every [`CausalLm`] (GPT-J, the Llama family): a batch's
//! context (packed rows: block-diagonal causal mask from the segment ids), embeddings and loss
//! from its host-side fields.
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use qtune_kernels::{LinearBackward, QBackend};
use qtune_lm::{BlockContext, CausalLm, TokenInputs};

use crate::step::SegmentedLm;
use crate::TrainError;

/// A backend the loop trains on: autodiff over a [`QBackend`] whose inner (no-grad) backend,
/// where evaluation and generation run, is one too.
pub trait TrainBackend: AutodiffBackend<InnerBackend: QBackend> + QBackend {}
impl<B: AutodiffBackend<InnerBackend: QBackend> + QBackend> TrainBackend for B {}

/// A model the loop trains: a [`CausalLm`] with autodiff whose inner module (evaluation,
/// generation) is a [`CausalLm`] too.
pub trait TrainLm<B: TrainBackend>:
    CausalLm<B> + AutodiffModule<B, InnerModule: CausalLm<B::InnerBackend>>
{
}
impl<B, M> TrainLm<B> for M
where
    B: TrainBackend,
    M: CausalLm<B> + AutodiffModule<B, InnerModule: CausalLm<B::InnerBackend>>,
{
}

/// `[B, T]` int tensor from a batch field.
pub fn int_tensor<B: Backend>(
    v: &[i64],
    shape: [usize; 2],
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), device)
}

impl<B: QBackend, M: CausalLm<B>> SegmentedLm<B> for M {
    type Ctx = BlockContext<B>;

    fn context(
        &self,
        batch: &qtune_data::Batch,
        dropout_seed: Option<u64>,
        backward: LinearBackward,
    ) -> BlockContext<B> {
        let [b, t] = batch.shape();
        // Packed rows: the segment ids carry the padding too (segment 0), so a pad query sees
        // earlier pads and no row of the mask is fully masked.
        let segment_ids = batch.segment_ids.as_deref();
        let inputs = TokenInputs {
            attention_mask: segment_ids.is_none().then_some(&batch.attention_mask[..]),
            position_ids: Some(&batch.position_ids),
            segment_ids,
        };
        CausalLm::context_with(self, b, t, inputs, dropout_seed).with_backward(backward)
    }

    fn embed(&self, batch: &qtune_data::Batch) -> Tensor<B, 3> {
        let ids = int_tensor::<B>(&batch.input_ids, batch.shape(), &self.device());
        CausalLm::embed(self, ids)
    }

    fn num_blocks(&self) -> usize {
        self.num_layers()
    }

    fn block(&self, i: usize, h: Tensor<B, 3>, ctx: &BlockContext<B>) -> Tensor<B, 3> {
        CausalLm::block(self, i, h, ctx, None)
    }

    fn grad_seed(&self, y: Tensor<B, 3>, dy: Tensor<B, 3>) -> Tensor<B, 1> {
        qtune_kernels::grad_seed(y, dy)
    }

    fn park(&self, h: Tensor<B, 3>) -> qtune_kernels::Parked<B, 3> {
        qtune_kernels::park(h)
    }

    fn visit_block<V: burn::module::ModuleVisitor<B>>(&self, i: usize, visitor: &mut V) {
        CausalLm::visit_block(self, i, visitor);
    }

    fn loss_sum(
        &self,
        h: Tensor<B, 3>,
        batch: &qtune_data::Batch,
    ) -> Result<Tensor<B, 1>, TrainError> {
        Ok(CausalLm::loss_sum(self, h, &batch.labels)?.0)
    }
}
