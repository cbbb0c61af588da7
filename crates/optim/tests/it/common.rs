//! Shared test helpers: a two-parameter module, the fixture reader, error metrics.

use burn::backend::{Autodiff, NdArray};
use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, TensorData};
use safetensors::SafeTensors;
use std::path::PathBuf;

pub type Inner = NdArray<f32>;
pub type B = Autodiff<Inner>;

/// Two trainable tensors with the fixture's names: `big` (8-bit state) and `small` (32-bit).
#[derive(Module, Debug)]
pub struct Pair<B: burn::tensor::backend::Backend> {
    pub big: Param<Tensor<B, 1>>,
    pub small: Param<Tensor<B, 1>>,
}

pub fn tensor(v: &[f32]) -> Tensor<B, 1> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &Default::default())
}

pub fn inner(v: &[f32]) -> Tensor<Inner, 1> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &Default::default())
}

pub fn values<Bk: burn::tensor::backend::Backend, const D: usize>(t: Tensor<Bk, D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("f32 data")
}

pub fn pair(big: &[f32], small: &[f32]) -> Pair<B> {
    Pair {
        big: Param::from_tensor(tensor(big)),
        small: Param::from_tensor(tensor(small)),
    }
}

/// Gradients for both parameters of `m`, as a backward would register them.
pub fn grads_for(m: &Pair<B>, big: &[f32], small: &[f32]) -> GradientsParams {
    let mut g = GradientsParams::new();
    g.register::<Inner, 1>(m.big.id, inner(big));
    g.register::<Inner, 1>(m.small.id, inner(small));
    g
}

/// The optimizer trace fixture (tests/fixtures/optim/make.py documents the keys).
pub struct Fixture(Vec<u8>);

impl Fixture {
    pub fn load() -> Self {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/optim/traces.safetensors");
        Self(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
    }
    fn view(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.0).expect("valid safetensors")
    }
    pub fn f32(&self, name: &str) -> Vec<f32> {
        let st = self.view();
        let v = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("fixture lacks {name}"));
        assert_eq!(v.dtype(), safetensors::Dtype::F32, "{name}");
        v.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
    pub fn u8(&self, name: &str) -> Vec<u8> {
        let st = self.view();
        let v = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("fixture lacks {name}"));
        assert_eq!(v.dtype(), safetensors::Dtype::U8, "{name}");
        v.data().to_vec()
    }
}

/// Max over elements of |a - b| / |b| (b is the reference; no element of the traces is 0).
pub fn max_rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| ((*x as f64 - *y as f64) / *y as f64).abs())
        .fold(0.0, f64::max)
}

/// ||a - b|| / ||b|| in f64.
pub fn norm_rel(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// max |a - b| / max |b|: the error relative to the tensor's scale.
pub fn tensor_rel(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let err = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .fold(0.0, f64::max);
    err / b.iter().map(|y| (*y as f64).abs()).fold(0.0, f64::max)
}
