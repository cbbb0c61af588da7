//! Where a decoded token's time goes: each piece of GPT-J's fixed-shape decode step timed as it
//! runs inside the decode graph (benchmarks only).

use burn::tensor::Tensor;
use qtune_kernels::{attention, graph_capture, greedy_advance, write_row, QBackend};
use qtune_lm::fixed::fixed_decoder;
use qtune_lm::{CausalLm, DecoderBlock, FixedKv, KvSlot, LmError};

use crate::layers::apply_rotary;
use crate::model::Gptj;

impl<B: QBackend> Gptj<B> {
    /// Device time per call of each piece of one fixed-shape decode step (for benchmarks: where
    /// a token's time goes). Each piece is recorded `reps` times in one device graph, replayed
    /// three times and timed around a device sync, so a piece costs what it costs inside the
    /// decode graph, launch gaps included; without graphs (CPU) the pieces run eagerly. Pieces
    /// use block 0 and the state after the prefill of `prompt`; the cache has room for `n_new`
    /// tokens (at least `4·reps + 2`: the whole-step piece advances the position each run).
    ///
    /// # Errors
    /// As [`CausalLm::greedy_fixed`]; a failed device sync or graph.
    pub fn decode_step_breakdown(
        &self,
        prompt: &[u32],
        n_new: usize,
        reps: usize,
    ) -> Result<Vec<(String, f64)>, LmError> {
        use std::time::Instant;
        let device = CausalLm::device(self);
        // The whole-step pieces run 1 + 4·reps steps, each advancing the position.
        if n_new < 4 * reps + 2 {
            return Err(LmError::Input(format!(
                "a decode breakdown with {reps} repetitions needs room for {} tokens, not {n_new}",
                4 * reps + 2
            )));
        }
        let mut dec = fixed_decoder(self, prompt, n_new)?;
        let dev = |e: String| LmError::Device(e);
        let sync = || B::sync(&device).map_err(|e| dev(format!("device sync: {e:?}")));
        let mut out = Vec::new();
        let mut time = |name: &str, f: &mut dyn FnMut()| -> Result<(), LmError> {
            f(); // compiles the kernels, warms the pool
            let graph = graph_capture::<B>(&device, || {
                for _ in 0..reps {
                    f();
                }
            })
            .map_err(|e| dev(format!("recording {name}: {e}")))?;
            sync()?;
            let t0 = Instant::now();
            for _ in 0..3 {
                match &graph {
                    Some(g) => g
                        .replay()
                        .map_err(|e| dev(format!("replaying {name}: {e}")))?,
                    None => (0..reps).for_each(|_| f()),
                }
            }
            sync()?;
            out.push((
                name.to_string(),
                t0.elapsed().as_secs_f64() / (3 * reps) as f64,
            ));
            Ok(())
        };
        let state = dec
            .state
            .clone()
            .ok_or_else(|| dev("decode state taken".into()))?;
        let (tok, pos, ctx) = dec.context(&state);
        let h = self.embed(tok.clone());
        let block = dec.model.blocks[0].clone();
        let x = block.ln_1.forward(h.clone());
        let [_, _, d] = x.dims();
        let hd = d / block.attn.n_head;
        let q = block
            .attn
            .q_proj
            .forward(x.clone())
            .reshape([1, 1, block.attn.n_head, hd]);
        let (kc, vc) = match &dec.layers[0] {
            FixedKv {
                k: Some(k),
                v: Some(v),
            } => (k.clone(), v.clone()),
            _ => return Err(dev("fixed KV cache taken".into())),
        };
        let l = kc.dims()[0];
        let kv4 = |t: Tensor<B, 2>| t.reshape([1, l, block.attn.n_head, hd]);
        let logits = self.head(h.clone()).reshape([1, self.config.vocab_size]);
        time("context (token, angles, mask)", &mut || {
            drop(dec.context(&state))
        })?;
        time("embed", &mut || drop(self.embed(tok.clone())))?;
        time("ln_1", &mut || drop(block.ln_1.forward(h.clone())))?;
        time("q_proj (GEMV + LoRA)", &mut || {
            drop(block.attn.q_proj.forward(x.clone()))
        })?;
        time("k_proj (GEMV)", &mut || {
            drop(block.attn.k_proj.forward(x.clone()))
        })?;
        time("rotary (q)", &mut || {
            drop(apply_rotary(q.clone(), &ctx.cos, &ctx.sin))
        })?;
        time("write_row (k, copy)", &mut || {
            drop(write_row(
                kc.clone(),
                x.clone().reshape([1, d]),
                pos.clone(),
            ))
        })?;
        time("attention (L rows)", &mut || {
            let o = attention(
                q.clone(),
                kv4(kc.clone()),
                kv4(vc.clone()),
                ctx.mask.clone(),
                (hd as f32).sqrt(),
            );
            drop(o)
        })?;
        time(
            "mlp + residuals (fc_in GEMV, bias+gelu, fc_out GEMV + bias + 2 residuals)",
            &mut || {
                drop(
                    block
                        .mlp
                        .forward_plus(x.clone(), &ctx, 0, vec![x.clone(), h.clone()]),
                )
            },
        )?;
        time("head (ln_f + lm_head)", &mut || drop(self.head(h.clone())))?;
        time("greedy_advance", &mut || {
            drop(greedy_advance(state.clone(), logits.clone()))
        })?;
        let kv = &mut dec.layers[0];
        time("block 0 (whole)", &mut || {
            drop(block.forward_cached(h.clone(), &ctx, Some(KvSlot::Fixed { kv, pos: &pos })))
        })?;
        drop((tok, pos, ctx));
        time("step (all blocks, head, argmax)", &mut || dec.step())?;
        // A one-step graph replayed back to back (the decode loop with `graph_steps: 1`):
        // its cost per replay, the host time of issuing one, and the graph's nodes.
        if let Some(g) = graph_capture::<B>(&device, || dec.step())
            .map_err(|e| dev(format!("recording a step: {e}")))?
        {
            sync()?;
            let t0 = Instant::now();
            for _ in 0..reps {
                g.replay()
                    .map_err(|e| dev(format!("replaying a step: {e}")))?;
            }
            let issued = t0.elapsed().as_secs_f64();
            sync()?;
            let total = t0.elapsed().as_secs_f64();
            out.push((
                "step (one graph per step, replayed)".into(),
                total / reps as f64,
            ));
            out.push(("replay call (host)".into(), issued / reps as f64));
            out.push((format!("step graph nodes: {}", g.describe()), 0.0));
        }
        Ok(out)
    }
}
