//! Where a PEFT method may change a decoder layer. The block calls these
//! points; the methods in `peft/` implement them; `model` never names a
//! method.
//!
//! | hook point | in the block | implemented by |
//! |---|---|---|
//! | [`Hooks::embedding_forward`] | after `embed_tokens` gathered the rows of the ids: may change rows in place | trainable tokens (alone or beside a LoRA), LoRA on `embed_tokens` |
//! | [`Hooks::head_forward`] | after `lm_head` computed logits: may change them in place; its backward runs before the frozen head's dx = dlogits·W | trainable tokens on a tied head, LoRA on `lm_head` |
//! | [`Hooks::embedding_table`], [`Hooks::head_weight`] | questions, not points: a trained copy of `embed_tokens` or `lm_head` that the model uses in place of the frozen weight; its gradient comes through the embedding's and the head's backward points | `modules_to_save` (beside a LoRA) |
//! | [`Hooks::score_weight`], [`Hooks::score_backward`] | a sequence classifier's `score` head (classifiers, reward models): the trained weight the head reads at each sequence's last non-pad token, and its gradient | `modules_to_save` under `task_type` SEQ_CLS (beside a LoRA) |
//! | [`Hooks::prepend_forward`] | before the first layer: embeddings put before every row's, at positions 0..V (the row's own tokens then start at V) | prompt tuning |
//! | [`Hooks::prefix_forward`] | in every layer's attention: keys and values before the row's own, at positions 0..P (the row's tokens then start at P) | prefix tuning |
//! | [`Hooks::linear_input`] | before a Linear: may replace its input x | (IA)³ on feed-forward modules (`x ⊙ l`) |
//! | [`Hooks::linear_low_rank`] | before a Linear's product: a low-rank term `s·h·Bᵀ` for the frozen product to add as it stores y (fused into decoding's kernels, and into every product on real GPUs); its backward point may give the term's share of dx the same way | LoRA (`h = drop(x)·Aᵀ`; dx's share `d(xa)·A` without dropout), AdaLoRA |
//! | [`Hooks::linear_forward`] | after a Linear's `y = x·Wᵀ + b`: may add to y or change it in place (it sees the frozen Linear) | DoRA (a per-row rescale of W + s·B·A), (IA)³ (`y ⊙ l`) |
//! | [`Hooks::residual_forward`] | where a sub-layer's output s joins the residual stream r: `out = r + s`, to which the hook may add a term of r and s | bottleneck adapters |
//! | [`Hooks::plain_residual`] | a question, not a point: whether a sub-layer's last Linear and its join to the residual stream are left alone, so that decoding may add the product straight into r as it stores it | every method, for the sites it leaves alone |
//! | [`Hooks::frozen`] | not a point either: hooks for one generation's forwards, keeping what each would recompute from the unchanging parameters | DoRA (its weight norms), LoRA and AdaLoRA (A's stacked for Linears on one input; A∘E), (IA)³ (outputs scaled in place) |
//!
//! Each forward point returns the tensors its backward needs ([`Saved`], as
//! torch's `ctx.save_for_backward`), or `None` when the method does nothing
//! there; the block keeps them and calls the matching backward point only
//! where there was a forward. The same `Hooks` value runs a layer's forward
//! and its backward: it carries the pass's dropout seed and, when training,
//! where the gradients go.
//!
//! A hook gives a Linear a low-rank term or a `linear_forward`, not both:
//! either one's saved state goes to [`Hooks::linear_backward`].
//!
//! A Linear's backward runs, in order: [`Hooks::linear_backward_dy`] (the
//! output gradient W sees, for a hook that changed y), then for a low-rank
//! term [`Hooks::linear_backward_low_rank`] (its gradients, and its share
//! of dx as a term the product adds as it stores dx), dx = dy·W (through
//! [`Hooks::linear_input_backward`] when the input was replaced), then,
//! unless the term's share went into dx's product,
//! [`Hooks::linear_backward`] (a term added to y adds its own share to dx).
//!
//! Methods that need other points (keys and values prepended in attention
//! for prefix tuning) add them here, with a default that does nothing, so
//! the methods already written are unchanged.

use super::block::Linear;
use crate::error::{Error, Result};
use crate::gpu::{Recorder, Tensor};
use crate::kernels::low_rank::LowRank;
use crate::kernels::qmatmul::QWeight;

/// One of a layer's seven Linears, in PEFT's `LORA_MODULES` order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl Proj {
    /// All seven, in [`Proj::index`] order.
    pub const ALL: [Proj; 7] = [Proj::Q, Proj::K, Proj::V, Proj::O, Proj::Gate, Proj::Up, Proj::Down];

    /// 0..7, in PEFT's `LORA_MODULES` order (q, k, v, o, gate, up, down).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The checkpoint's module name (`q_proj`, …, `down_proj`).
    pub fn name(self) -> &'static str {
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"][self.index()]
    }
}

/// The two sub-layers whose outputs join the residual stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sublayer {
    /// `h = x + self_attn(input_layernorm(x))`
    Attention,
    /// `out = h + mlp(post_attention_layernorm(h))`
    Mlp,
}

impl Sublayer {
    /// The Linear whose output is the sub-layer's: o_proj, down_proj.
    pub fn output_proj(self) -> Proj {
        match self {
            Sublayer::Attention => Proj::O,
            Sublayer::Mlp => Proj::Down,
        }
    }
}

/// The tensors a hook's forward keeps for its backward.
#[derive(Clone, Debug, Default)]
pub struct Saved(pub Vec<Tensor>);

impl Saved {
    /// The `i`-th saved tensor; a typed error (not a panic) when the forward
    /// saved fewer, i.e. a forward and a backward of different methods.
    pub fn get(&self, op: &'static str, i: usize) -> Result<&Tensor> {
        self.0.get(i).ok_or_else(|| {
            Error::invalid(op, format!("the forward saved {} tensors, the backward needs #{i}", self.0.len()))
        })
    }
}

/// The hook points of every layer. Each method has a default that leaves the
/// layer as it is, so [`NoHooks`] is the frozen model and a method implements
/// only the points it uses.
pub trait Hooks {
    /// `embed_tokens` gathered x (N, D) for ids (N) u32: the hook may
    /// change rows of x in place.
    fn embedding_forward(&self, _rec: &mut Recorder, _ids: &Tensor, _x: &Tensor) -> Result<()> {
        Ok(())
    }

    /// The backward of [`Hooks::embedding_forward`]: dx (N, D), the
    /// gradient at the embedding's output for ids (N), into the hook's
    /// accumulators.
    fn embedding_backward(&self, _rec: &mut Recorder, _ids: &Tensor, _dx: &Tensor) -> Result<()> {
        Ok(())
    }

    /// `lm_head` computed logits (n, V) from x (n, D): the hook may change
    /// them in place.
    fn head_forward(&self, _rec: &mut Recorder, _x: &Tensor, _logits: &Tensor) -> Result<()> {
        Ok(())
    }

    /// The backward of [`Hooks::head_forward`], before the frozen head's
    /// dx += dlogits·W: the hook may change dlogits (n, V) in place (what
    /// the frozen product should see), adds its own share of ∂/∂x into dx
    /// (n, D), and its parameters' gradients into its accumulators.
    fn head_backward(&self, _rec: &mut Recorder, _x: &Tensor, _dlogits: &Tensor, _dx: &Tensor) -> Result<()> {
        Ok(())
    }

    /// A trained `embed_tokens` table (V, D) that the model's embedding
    /// reads in place of the frozen one (PEFT's `modules_to_save`); its
    /// gradient is the hook's to take at [`Hooks::embedding_backward`].
    fn embedding_table(&self) -> Option<QWeight> {
        None
    }

    /// A trained `lm_head` weight (V, D) that [`Head`](super::head::Head)
    /// uses in place of the frozen one, forward and backward (PEFT's
    /// `modules_to_save`); its gradient is the hook's to take at
    /// [`Hooks::head_backward`].
    fn head_weight(&self) -> Option<QWeight> {
        None
    }

    /// A trained `score` weight (num_labels, D), the head of a sequence
    /// classifier ([`ScoreHead`](super::score::ScoreHead); PEFT's
    /// `modules_to_save` under `task_type` SEQ_CLS); its gradient is the
    /// hook's to take at [`Hooks::score_backward`].
    fn score_weight(&self) -> Option<QWeight> {
        None
    }

    /// The score head's backward point: the gradient of the hook's score
    /// weight, dscoresᵀ·x for the pooled rows x (n, D) and dscores (n, num_labels),
    /// into its accumulators (the rows' dx = dscores·W is the model's).
    fn score_backward(&self, _rec: &mut Recorder, _x: &Tensor, _dscores: &Tensor) -> Result<()> {
        Ok(())
    }

    /// V, the virtual tokens [`Hooks::prepend_forward`] puts before every
    /// row (0: none). They hold positions 0..V, the row's tokens V..V+T, and
    /// the model returns (and computes the loss on) the row's own positions only.
    fn virtual_tokens(&self) -> usize {
        0
    }

    /// The embeddings (B, V, D) to put before the batch's own, V =
    /// [`Hooks::virtual_tokens`] > 0.
    fn prepend_forward(&self, _rec: &mut Recorder, _batch: usize) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// The backward of [`Hooks::prepend_forward`]: the gradient at the
    /// virtual positions' embeddings, (B, V, D), into the hook's accumulators.
    fn prepend_backward(&self, _rec: &mut Recorder, _d: &Tensor) -> Result<()> {
        Ok(())
    }

    /// P, the keys and values [`Hooks::prefix_forward`] puts before every
    /// row's in attention (0: none). They hold positions 0..P (as a KV cache's
    /// first entries, not rotated by RoPE) and the row's tokens P..P+T.
    fn prefix_len(&self) -> usize {
        0
    }

    /// Layer `layer`'s prefix keys and values for a batch of `batch` rows,
    /// (B, P, KV, hd) each.
    fn prefix_forward(&self, _rec: &mut Recorder, _layer: usize, _batch: usize) -> Result<Option<(Tensor, Tensor)>> {
        Ok(None)
    }

    /// The backward of [`Hooks::prefix_forward`]: the gradients of layer
    /// `layer`'s prefix keys and values, (B, P, KV, hd) each, into the hook's
    /// accumulators.
    fn prefix_backward(&self, _rec: &mut Recorder, _layer: usize, _dk: &Tensor, _dv: &Tensor) -> Result<()> {
        Ok(())
    }

    /// Linear `proj` of layer `layer` is about to run on x (M, in): the hook
    /// may return the input it runs on instead, x' (M, in).
    fn linear_input(
        &self,
        _rec: &mut Recorder,
        _layer: usize,
        _proj: Proj,
        _x: &Tensor,
    ) -> Result<Option<(Tensor, Saved)>> {
        Ok(None)
    }

    /// The backward of [`Hooks::linear_input`]: ∂/∂x (M, in) from ∂/∂x' (M,
    /// in), and the hook's parameters' gradients into its accumulators.
    fn linear_input_backward(
        &self,
        _rec: &mut Recorder,
        _layer: usize,
        proj: Proj,
        _dx_input: &Tensor,
        _saved: &Saved,
    ) -> Result<Tensor> {
        Err(unexpected("linear_input_backward", proj.name()))
    }

    /// Linear `proj` of layer `layer` is about to compute y = x·Wᵀ (M, out)
    /// from x (M, in): the hook may give a low-rank term `scale·h·Bᵀ`, h (M,
    /// r) and B (out, r), for the frozen product to add (before its bias).
    /// Its backward is [`Hooks::linear_backward`], as for a term
    /// [`Hooks::linear_forward`] adds.
    fn linear_low_rank(
        &self,
        _rec: &mut Recorder,
        _layer: usize,
        _proj: Proj,
        _x: &Tensor,
    ) -> Result<Option<(LowRank, Saved)>> {
        Ok(None)
    }

    /// Linear `proj` of layer `layer` (`base`, frozen) has computed y (M,
    /// out) from x (M, in); the hook may add to y, or change it, in place.
    /// After a [`Hooks::linear_low_rank`] term, y holds the term too, and a
    /// hook may change it only in a pass that keeps nothing for a backward
    /// (it returns no state: DoRA in a generation rescales y).
    fn linear_forward(
        &self,
        _rec: &mut Recorder,
        _layer: usize,
        _proj: Proj,
        _base: &Linear,
        _x: &Tensor,
        _y: &Tensor,
    ) -> Result<Option<Saved>> {
        Ok(None)
    }

    /// The first half of [`Hooks::linear_forward`]'s backward, for a hook
    /// that changed y: the gradient at W's output (M, out) for dy (M, out),
    /// or `None` when it is dy itself; its parameters' gradients go into its
    /// accumulators.
    fn linear_backward_dy(
        &self,
        _rec: &mut Recorder,
        _layer: usize,
        _proj: Proj,
        _dy: &Tensor,
        _saved: &Saved,
    ) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// The backward of a term [`Hooks::linear_low_rank`] gave, where it can
    /// be fused: the hook adds its parameters' gradients into its
    /// accumulators and returns the term's share of ∂/∂x for dy (M, out) as
    /// a low-rank term (h (M, r), B (in, r) or Bᵀ (r, in)) for the frozen dx
    /// = dy·W to add as it stores dx; [`Hooks::linear_backward`] is then not
    /// called. `None` (the default): nothing was done, and
    /// [`Hooks::linear_backward`] does the whole backward after dx = dy·W.
    fn linear_backward_low_rank(
        &self,
        _rec: &mut Recorder,
        _layer: usize,
        _proj: Proj,
        _dy: &Tensor,
        _saved: &Saved,
    ) -> Result<Option<LowRank>> {
        Ok(None)
    }

    /// The second half, for a hook that added a term to y: adds the term's
    /// share of ∂/∂x into dx (M, in), which already holds W's, and its
    /// parameters' gradients into its accumulators; dy is the gradient at
    /// the Linear's output and `base` the frozen Linear.
    #[allow(clippy::too_many_arguments)] // where (layer, proj, base), the gradients, the saved state, the accumulator
    fn linear_backward(
        &self,
        _rec: &mut Recorder,
        _layer: usize,
        _proj: Proj,
        _base: &Linear,
        _dy: &Tensor,
        _saved: &Saved,
        _dx: &Tensor,
    ) -> Result<()> {
        Ok(())
    }

    /// Sub-layer `site` of layer `layer` produced s (B, T, D) from the residual
    /// stream r (B, T, D), and `out = r + s` has been written; the hook may
    /// add its own term to `out`.
    fn residual_forward(
        &self,
        _rec: &mut Recorder,
        _layer: usize,
        _site: Sublayer,
        _r: &Tensor,
        _s: &Tensor,
        _out: &Tensor,
    ) -> Result<Option<Saved>> {
        Ok(None)
    }

    /// Whether the hooks leave `site`'s join to the residual stream plain in
    /// layer `layer`: no [`Hooks::linear_forward`] on the sub-layer's last
    /// Linear ([`Sublayer::output_proj`]) and no [`Hooks::residual_forward`]
    /// at `site` (a `linear_input` or a low-rank term there is fine). Then a
    /// forward that keeps nothing for a backward (decoding) adds that
    /// Linear's product into the residual stream as the product stores it,
    /// and calls neither point. A method that uses either point at `site`
    /// must answer false; false, the default, is always right.
    fn plain_residual(&self, _layer: usize, _site: Sublayer) -> bool {
        false
    }

    /// Whether the hooks leave Linear `proj`'s output plain in layer
    /// `layer`: no [`Hooks::linear_forward`] there (a `linear_input` or a
    /// low-rank term is fine). Then a forward that keeps nothing for a
    /// backward (decoding) may have the product's store do what comes next
    /// (up_proj's: SwiGLU's gate) and not call that point. A method that
    /// uses `linear_forward` at `proj` must answer false; false, the
    /// default, is always right.
    fn plain_output(&self, _layer: usize, _proj: Proj) -> bool {
        false
    }

    /// For many forwards with unchanging parameters and no backward (one
    /// generation: its prefill and every step), hooks that compute once
    /// what each such forward would recompute (DoRA's weight norms, LoRA's
    /// and AdaLoRA's stacked A's) and give the same outputs; `None` where nothing is worth keeping. They borrow
    /// these hooks and live no longer than the generation.
    fn frozen(&self) -> Option<Box<dyn Hooks + '_>> {
        None
    }

    /// The backward of [`Hooks::residual_forward`] for dout (B, T, D): returns
    /// (∂/∂s, ∂/∂r), each dout plus the hook's share, and adds its
    /// parameters' gradients into its own accumulators.
    fn residual_backward(
        &self,
        _rec: &mut Recorder,
        _layer: usize,
        site: Sublayer,
        _dout: &Tensor,
        _saved: &Saved,
    ) -> Result<(Tensor, Tensor)> {
        Err(unexpected("residual_backward", if site == Sublayer::Attention { "attention" } else { "mlp" }))
    }
}

fn unexpected(op: &'static str, at: &str) -> Error {
    Error::invalid(
        op,
        format!("the forward saved state at {at} that these hooks have no backward for (forward and backward with different adapters?)"),
    )
}

/// Implements [`Hooks`] for a type by forwarding every point to the hooks an
/// expression of `self` gives (`forward_hooks!(Adapter, |a| a.eval().hooks())`).
/// It lives beside the trait so that a new point is forwarded too: a
/// forwarding impl written out by hand would silently keep the new point's
/// do-nothing default. [`Hooks::frozen`] borrows `self`, not the hooks the
/// expression makes, so it is given on its own (`frozen: |a| …`); without
/// it the type keeps the default, which keeps nothing.
#[macro_export]
macro_rules! forward_hooks {
    ($ty:ty, |$s:ident| $hooks:expr) => {
        $crate::forward_hooks!($ty, |$s| $hooks, frozen: |_unused| None);
    };
    ($ty:ty, |$s:ident| $hooks:expr, frozen: |$f:ident| $frozen:expr) => {
        impl $crate::model::llama::hooks::Hooks for $ty {
            fn frozen(&self) -> Option<Box<dyn $crate::model::llama::hooks::Hooks + '_>> {
                let $f = self;
                $frozen
            }

            fn embedding_forward(
                &self,
                rec: &mut $crate::gpu::Recorder,
                ids: &$crate::gpu::Tensor,
                x: &$crate::gpu::Tensor,
            ) -> $crate::Result<()> {
                let $s = self;
                $hooks.embedding_forward(rec, ids, x)
            }

            fn embedding_backward(
                &self,
                rec: &mut $crate::gpu::Recorder,
                ids: &$crate::gpu::Tensor,
                dx: &$crate::gpu::Tensor,
            ) -> $crate::Result<()> {
                let $s = self;
                $hooks.embedding_backward(rec, ids, dx)
            }

            fn head_forward(
                &self,
                rec: &mut $crate::gpu::Recorder,
                x: &$crate::gpu::Tensor,
                logits: &$crate::gpu::Tensor,
            ) -> $crate::Result<()> {
                let $s = self;
                $hooks.head_forward(rec, x, logits)
            }

            fn head_backward(
                &self,
                rec: &mut $crate::gpu::Recorder,
                x: &$crate::gpu::Tensor,
                dlogits: &$crate::gpu::Tensor,
                dx: &$crate::gpu::Tensor,
            ) -> $crate::Result<()> {
                let $s = self;
                $hooks.head_backward(rec, x, dlogits, dx)
            }

            fn embedding_table(&self) -> Option<$crate::kernels::qmatmul::QWeight> {
                let $s = self;
                $hooks.embedding_table()
            }

            fn head_weight(&self) -> Option<$crate::kernels::qmatmul::QWeight> {
                let $s = self;
                $hooks.head_weight()
            }

            fn score_weight(&self) -> Option<$crate::kernels::qmatmul::QWeight> {
                let $s = self;
                $hooks.score_weight()
            }

            fn score_backward(
                &self,
                rec: &mut $crate::gpu::Recorder,
                x: &$crate::gpu::Tensor,
                dscores: &$crate::gpu::Tensor,
            ) -> $crate::Result<()> {
                let $s = self;
                $hooks.score_backward(rec, x, dscores)
            }

            fn virtual_tokens(&self) -> usize {
                let $s = self;
                $hooks.virtual_tokens()
            }

            fn prepend_forward(
                &self,
                rec: &mut $crate::gpu::Recorder,
                batch: usize,
            ) -> $crate::Result<Option<$crate::gpu::Tensor>> {
                let $s = self;
                $hooks.prepend_forward(rec, batch)
            }

            fn prepend_backward(&self, rec: &mut $crate::gpu::Recorder, d: &$crate::gpu::Tensor) -> $crate::Result<()> {
                let $s = self;
                $hooks.prepend_backward(rec, d)
            }

            fn prefix_len(&self) -> usize {
                let $s = self;
                $hooks.prefix_len()
            }

            fn prefix_forward(
                &self,
                rec: &mut $crate::gpu::Recorder,
                layer: usize,
                batch: usize,
            ) -> $crate::Result<Option<($crate::gpu::Tensor, $crate::gpu::Tensor)>> {
                let $s = self;
                $hooks.prefix_forward(rec, layer, batch)
            }

            fn prefix_backward(
                &self,
                rec: &mut $crate::gpu::Recorder,
                layer: usize,
                dk: &$crate::gpu::Tensor,
                dv: &$crate::gpu::Tensor,
            ) -> $crate::Result<()> {
                let $s = self;
                $hooks.prefix_backward(rec, layer, dk, dv)
            }

            fn linear_input(
                &self,
                rec: &mut $crate::gpu::Recorder,
                layer: usize,
                proj: $crate::model::llama::hooks::Proj,
                x: &$crate::gpu::Tensor,
            ) -> $crate::Result<Option<($crate::gpu::Tensor, $crate::model::llama::hooks::Saved)>> {
                let $s = self;
                $hooks.linear_input(rec, layer, proj, x)
            }

            fn linear_input_backward(
                &self,
                rec: &mut $crate::gpu::Recorder,
                layer: usize,
                proj: $crate::model::llama::hooks::Proj,
                dx_input: &$crate::gpu::Tensor,
                saved: &$crate::model::llama::hooks::Saved,
            ) -> $crate::Result<$crate::gpu::Tensor> {
                let $s = self;
                $hooks.linear_input_backward(rec, layer, proj, dx_input, saved)
            }

            fn linear_low_rank(
                &self,
                rec: &mut $crate::gpu::Recorder,
                layer: usize,
                proj: $crate::model::llama::hooks::Proj,
                x: &$crate::gpu::Tensor,
            ) -> $crate::Result<Option<($crate::kernels::low_rank::LowRank, $crate::model::llama::hooks::Saved)>> {
                let $s = self;
                $hooks.linear_low_rank(rec, layer, proj, x)
            }

            fn linear_forward(
                &self,
                rec: &mut $crate::gpu::Recorder,
                layer: usize,
                proj: $crate::model::llama::hooks::Proj,
                base: &$crate::model::llama::block::Linear,
                x: &$crate::gpu::Tensor,
                y: &$crate::gpu::Tensor,
            ) -> $crate::Result<Option<$crate::model::llama::hooks::Saved>> {
                let $s = self;
                $hooks.linear_forward(rec, layer, proj, base, x, y)
            }

            fn linear_backward_dy(
                &self,
                rec: &mut $crate::gpu::Recorder,
                layer: usize,
                proj: $crate::model::llama::hooks::Proj,
                dy: &$crate::gpu::Tensor,
                saved: &$crate::model::llama::hooks::Saved,
            ) -> $crate::Result<Option<$crate::gpu::Tensor>> {
                let $s = self;
                $hooks.linear_backward_dy(rec, layer, proj, dy, saved)
            }

            fn linear_backward_low_rank(
                &self,
                rec: &mut $crate::gpu::Recorder,
                layer: usize,
                proj: $crate::model::llama::hooks::Proj,
                dy: &$crate::gpu::Tensor,
                saved: &$crate::model::llama::hooks::Saved,
            ) -> $crate::Result<Option<$crate::kernels::low_rank::LowRank>> {
                let $s = self;
                $hooks.linear_backward_low_rank(rec, layer, proj, dy, saved)
            }

            fn linear_backward(
                &self,
                rec: &mut $crate::gpu::Recorder,
                layer: usize,
                proj: $crate::model::llama::hooks::Proj,
                base: &$crate::model::llama::block::Linear,
                dy: &$crate::gpu::Tensor,
                saved: &$crate::model::llama::hooks::Saved,
                dx: &$crate::gpu::Tensor,
            ) -> $crate::Result<()> {
                let $s = self;
                $hooks.linear_backward(rec, layer, proj, base, dy, saved, dx)
            }

            fn residual_forward(
                &self,
                rec: &mut $crate::gpu::Recorder,
                layer: usize,
                site: $crate::model::llama::hooks::Sublayer,
                r: &$crate::gpu::Tensor,
                s: &$crate::gpu::Tensor,
                out: &$crate::gpu::Tensor,
            ) -> $crate::Result<Option<$crate::model::llama::hooks::Saved>> {
                let $s = self;
                $hooks.residual_forward(rec, layer, site, r, s, out)
            }

            fn plain_residual(&self, layer: usize, site: $crate::model::llama::hooks::Sublayer) -> bool {
                let $s = self;
                $hooks.plain_residual(layer, site)
            }

            fn plain_output(&self, layer: usize, proj: $crate::model::llama::hooks::Proj) -> bool {
                let $s = self;
                $hooks.plain_output(layer, proj)
            }

            fn residual_backward(
                &self,
                rec: &mut $crate::gpu::Recorder,
                layer: usize,
                site: $crate::model::llama::hooks::Sublayer,
                dout: &$crate::gpu::Tensor,
                saved: &$crate::model::llama::hooks::Saved,
            ) -> $crate::Result<($crate::gpu::Tensor, $crate::gpu::Tensor)> {
                let $s = self;
                $hooks.residual_backward(rec, layer, site, dout, saved)
            }
        }
    };
}

/// The frozen model: every hook point leaves the layer as it is.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHooks;

impl Hooks for NoHooks {
    fn plain_residual(&self, _layer: usize, _site: Sublayer) -> bool {
        true
    }

    fn plain_output(&self, _layer: usize, _proj: Proj) -> bool {
        true
    }
}

/// The hooks as one layer sees them.
#[derive(Clone, Copy)]
pub struct LayerHooks<'a> {
    pub hooks: &'a dyn Hooks,
    pub layer: usize,
}

impl<'a> LayerHooks<'a> {
    pub fn new(hooks: &'a dyn Hooks, layer: usize) -> Self {
        LayerHooks { hooks, layer }
    }
}
