//! The loop's [`SegmentedLm`] for every [`CausalLm`] (GPT-J, the Llama family): a batch's
//! context, embeddings and loss from its host-side fields.
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use qtune_kernels::QBackend;
use qtune_lm::{BlockContext, CausalLm};

use crate::step::SegmentedLm;
use crate::TrainError;

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

    fn context(&self, batch: &qtune_data::Batch, dropout_seed: Option<u64>) -> BlockContext<B> {
        let [b, t] = batch.shape();
        CausalLm::context(
            self,
            b,
            t,
            Some(&batch.attention_mask),
            Some(&batch.position_ids),
            dropout_seed,
        )
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

    fn loss_sum(
        &self,
        h: Tensor<B, 3>,
        batch: &qtune_data::Batch,
    ) -> Result<Tensor<B, 1>, TrainError> {
        let labels = int_tensor::<B>(&batch.labels, batch.shape(), &self.device());
        Ok(CausalLm::loss_sum(self, h, labels)?.0)
    }
}
