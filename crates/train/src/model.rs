//! GPT-J glue: the loop's [`SegmentedLm`] and [`AdapterIo`] for `qtune_gptj::Gptj`, and
//! building the configured model (random tiny or loaded, dense or quantized, + LoRA).
use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Int, Tensor, TensorData};
use qtune_gptj::{BlockContext, Gptj};
use qtune_kernels::QBackend;
use qtune_lora::peft::{LoraTensors, PeftAdapter, PeftAdapterConfig};
use qtune_lora::LoraAdapter;

use crate::step::SegmentedLm;
use crate::trainer::AdapterIo;
use crate::TrainError;

/// `[B, T]` int tensor from a batch field.
pub fn int_tensor<B: Backend>(
    v: &[i64],
    shape: [usize; 2],
    device: &B::Device,
) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), device)
}

impl<B: QBackend> SegmentedLm<B> for Gptj<B> {
    type Ctx = BlockContext<B>;

    fn context(&self, batch: &qtune_data::Batch, dropout_seed: Option<u64>) -> BlockContext<B> {
        let [b, t] = batch.shape();
        self.context(
            b,
            t,
            Some(&batch.attention_mask),
            Some(&batch.position_ids),
            dropout_seed,
        )
    }

    fn embed(&self, batch: &qtune_data::Batch) -> Tensor<B, 3> {
        let ids = int_tensor::<B>(&batch.input_ids, batch.shape(), &self.wte.device());
        Gptj::embed(self, ids)
    }

    fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    fn block(&self, i: usize, h: Tensor<B, 3>, ctx: &BlockContext<B>) -> Tensor<B, 3> {
        self.blocks[i].forward(h, ctx)
    }

    fn grad_seed(&self, y: Tensor<B, 3>, dy: Tensor<B, 3>) -> Tensor<B, 1> {
        qtune_kernels::grad_seed(y, dy)
    }

    fn loss_sum(
        &self,
        h: Tensor<B, 3>,
        batch: &qtune_data::Batch,
    ) -> Result<Tensor<B, 1>, TrainError> {
        let labels = int_tensor::<B>(&batch.labels, batch.shape(), &self.wte.device());
        Ok(Gptj::loss_sum(self, h, labels)?.0)
    }
}

fn host_2d<B: Backend>(t: Tensor<B, 2>) -> (Vec<f32>, [usize; 2]) {
    let shape = t.dims();
    let v = t
        .cast(DType::F32)
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .unwrap_or_default();
    (v, shape)
}

impl<B: QBackend> AdapterIo for Gptj<B> {
    fn export_adapter(&self, config: PeftAdapterConfig) -> PeftAdapter {
        let mut modules = BTreeMap::new();
        for (name, lin) in self.linears() {
            if let Some(l) = &lin.lora {
                let (a, a_shape) = host_2d(l.lora_a.val());
                let (b, b_shape) = host_2d(l.lora_b.val());
                modules.insert(
                    name,
                    LoraTensors {
                        a,
                        a_shape,
                        b,
                        b_shape,
                    },
                );
            }
        }
        PeftAdapter { config, modules }
    }

    fn import_adapter(mut self, adapter: &PeftAdapter) -> Result<Self, TrainError> {
        let scaling = adapter.config.scaling();
        let dropout = adapter.config.lora_dropout;
        let mut used = 0;
        for (name, lin) in self.linears_mut() {
            let Some(t) = adapter.modules.get(&name) else {
                if lin.lora.is_some() {
                    return Err(TrainError::AdapterMismatch {
                        msg: format!(
                            "the adapter has no factors for `{name}`, which the model adapts"
                        ),
                    });
                }
                continue;
            };
            if t.weight_shape() != lin.shape() {
                return Err(TrainError::AdapterMismatch {
                    msg: format!(
                        "`{name}`: adapter for weight {:?}, model weight is {:?}",
                        t.weight_shape(),
                        lin.shape()
                    ),
                });
            }
            let device = lin.device();
            let a = Tensor::<B, 2>::from_data(TensorData::new(t.a.clone(), t.a_shape), &device);
            let b = Tensor::<B, 2>::from_data(TensorData::new(t.b.clone(), t.b_shape), &device);
            // Keep the adapter's dtype (f32 unless the model chose otherwise).
            let dtype = lin
                .lora
                .as_ref()
                .map_or(DType::F32, |l| l.lora_a.val().dtype());
            let (a, b) = (a.cast(dtype), b.cast(dtype));
            *lin = lin
                .clone()
                .with_adapter(LoraAdapter::from_tensors(a, b, scaling, dropout));
            used += 1;
        }
        if used != adapter.modules.len() {
            let known: Vec<String> = self.linears().into_iter().map(|(n, _)| n).collect();
            let unknown: Vec<&String> = adapter
                .modules
                .keys()
                .filter(|k| !known.contains(k))
                .collect();
            return Err(TrainError::AdapterMismatch {
                msg: format!("modules not in this model: {unknown:?}"),
            });
        }
        Ok(self)
    }
}
