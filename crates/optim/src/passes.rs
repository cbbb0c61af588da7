//! The three passes of an optimizer step over a module: collect the paths and sizes of the
//! parameters with a gradient, gather each one's flat value and gradient, map the updated
//! values back in.
use std::collections::HashMap;

use burn::module::{ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{DType, Tensor};

/// One trainable tensor of a step: its state key, flat value and flat gradient.
pub(crate) struct Item<B: Backend> {
    pub(crate) id: ParamId,
    pub(crate) path: String,
    pub(crate) p: Tensor<B, 1>,
    pub(crate) g: Tensor<B, 1>,
}

fn path_key(stack: &[String], id: ParamId) -> String {
    if stack.is_empty() {
        format!("param-{id}")
    } else {
        stack.join(".")
    }
}

/// First pass: module paths and sizes of the parameters that have a gradient.
pub(crate) struct PathCollector<'a, B: AutodiffBackend> {
    pub(crate) grads: &'a GradientsParams,
    pub(crate) stack: Vec<String>,
    /// (id, path, parameter numel, gradient numel)
    pub(crate) found: Vec<(ParamId, String, usize, usize)>,
    pub(crate) _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for PathCollector<'_, B> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.stack.push(name.to_string());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.stack.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let numel = param.shape().num_elements();
            if numel == 0 {
                return; // nothing to update, and no block to quantize
            }
            let grad_numel = g.shape().num_elements();
            let path = path_key(&self.stack, param.id);
            self.found.push((param.id, path, numel, grad_numel));
        }
    }
}

/// Pass 1 of a step: takes each tracked parameter's gradient, flattens both.
pub(crate) struct Gather<'a, B: AutodiffBackend> {
    pub(crate) grads: &'a mut GradientsParams,
    pub(crate) paths: &'a HashMap<ParamId, String>,
    pub(crate) items: Vec<Item<B::InnerBackend>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Gather<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some(path) = self.paths.get(&param.id) else {
            return;
        };
        let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) else {
            return;
        };
        let numel = param.shape().num_elements();
        // All optimizer math and state is f32, whatever the parameter's (or the device
        // default) dtype: mixed-dtype element-wise ops are not promoted by Burn on CUDA.
        let f32 = |t: Tensor<B::InnerBackend, 1>| {
            if t.dtype() == DType::F32 {
                t
            } else {
                t.cast(DType::F32)
            }
        };
        self.items.push(Item {
            id: param.id,
            path: path.clone(),
            p: f32(param.val().inner().reshape([numel])),
            g: f32(grad.reshape([numel])),
        });
    }
}

/// Pass 3 of a step: swaps in the updated values (same shape, same `require_grad`).
pub(crate) struct StepMapper<'a, B: AutodiffBackend> {
    pub(crate) updated: &'a mut HashMap<ParamId, Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for StepMapper<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(p) = self.updated.remove(&id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let require_grad = tensor.is_require_grad();
        let p = if p.dtype() == tensor.dtype() {
            p
        } else {
            p.cast(tensor.dtype())
        };
        let mut tensor = Tensor::<B, D>::from_inner(p.reshape(tensor.shape()));
        if require_grad {
            tensor = tensor.require_grad();
        }
        Param::from_mapped_value(id, tensor, mapper)
    }
}
