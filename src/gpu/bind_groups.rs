//! Bind groups kept from one submission to the next, and the uniform buffer
//! of parameter blocks they bind.
//!
//! Building a bind group costs the CPU several microseconds (wgpu's checks and
//! the driver's descriptor set: ~9 µs each on lavapipe), and a submission
//! builds one per dispatch. A decoding step is hundreds of dispatches, the
//! same every token: the same pipelines, parameter blocks at the same places
//! and, because the pool hands the same buffers to the same ops, the same
//! buffers. So the bind groups a submission builds are kept, keyed by the
//! pipeline, the parameter block's offset and size, and the buffers bound,
//! and later submissions reuse them.
//!
//! - **One uniform buffer per device.** It persists so that the kept bind
//!   groups stay valid. Each submission writes its parameter blocks into it
//!   with `queue.write_buffer` just before it submits, and the queue orders
//!   that write after every earlier submission, so work in flight keeps
//!   reading its own parameters. Writing and submitting happen under one
//!   lock, so two threads cannot interleave them. The buffer only grows; when
//!   it does, every kept bind group is dropped.
//! - **Kept groups hold GPU memory.** A bind group keeps its buffers alive, so
//!   a group whose buffer was released (its last tensor and the pool let it
//!   go) is dropped at the next submission, and `Gpu::trim_memory` drops them
//!   all. At most [`MAX_KEPT`] are kept; past that the map starts again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use super::pipelines::CachedPipeline;
use super::tensor::Storage;

/// Bind groups kept at most (a training step of a 7-layer model builds ~1,000).
pub(crate) const MAX_KEPT: usize = 8192;

/// What tells bind groups apart: the pipeline, the parameter block (offset
/// and size in the uniform buffer) and each binding's buffer (by address: a
/// kept entry holds a `Weak` to each, so no other buffer can take the address).
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    pipeline: usize,
    params: (u64, u64),
    buffers: Vec<(u32, usize)>,
}

struct Kept {
    group: wgpu::BindGroup,
    buffers: Vec<Weak<Storage>>,
    /// Keeps the pipeline (and so the key's address) alive.
    _pipeline: Arc<CachedPipeline>,
}

#[derive(Default)]
pub(crate) struct BindGroups {
    inner: Mutex<Inner>,
}

#[derive(Default)]
pub(crate) struct Inner {
    params: Option<wgpu::Buffer>,
    kept: HashMap<Key, Kept>,
}

impl BindGroups {
    /// The state, for one submission's writes, bind groups and submit.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update is an insert or a removal: a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drop every kept bind group (and so the memory of released buffers).
    pub(crate) fn clear(&self) {
        self.lock().kept.clear();
    }
}

impl Inner {
    pub(crate) fn len(&self) -> usize {
        self.kept.len()
    }

    /// The uniform buffer, at least `bytes` long (a new one drops every kept
    /// group); a submission writes its blocks at its start just before it
    /// submits (`Encoded::submit`), ordered after every earlier submission.
    pub(crate) fn params_buffer(&mut self, device: &wgpu::Device, bytes: u64) -> wgpu::Buffer {
        let bytes = bytes.max(16);
        match &self.params {
            Some(b) if b.size() >= bytes => b.clone(),
            _ => {
                self.kept.clear();
                let b = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("params"),
                    size: bytes.next_power_of_two().max(4096),
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                self.params = Some(b.clone());
                b
            }
        }
    }

    /// Drop the kept groups whose buffers were released; start again when
    /// more than [`MAX_KEPT`] are kept.
    pub(crate) fn forget_released(&mut self) {
        self.kept.retain(|_, k| k.buffers.iter().all(|b| b.strong_count() > 0));
        if self.kept.len() > MAX_KEPT {
            self.kept.clear();
        }
    }

    /// The bind group of `pipeline` with the parameter block at `offset`
    /// (`size` bytes) of `params` at binding 0 and `buffers` at theirs: a
    /// kept one, or a new one, then kept.
    pub(crate) fn group(
        &mut self,
        device: &wgpu::Device,
        pipeline: &Arc<CachedPipeline>,
        params: &wgpu::Buffer,
        (offset, size): (u64, u64),
        buffers: &[(u32, Arc<Storage>)],
    ) -> wgpu::BindGroup {
        let key = Key {
            pipeline: Arc::as_ptr(pipeline) as usize,
            params: (offset, size),
            buffers: buffers.iter().map(|(b, s)| (*b, Arc::as_ptr(s) as usize)).collect(),
        };
        if let Some(k) = self.kept.get(&key) {
            return k.group.clone();
        }
        let mut entries = Vec::with_capacity(buffers.len() + 1);
        entries.push(wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: params,
                offset,
                size: wgpu::BufferSize::new(size),
            }),
        });
        for (binding, s) in buffers {
            entries.push(wgpu::BindGroupEntry { binding: *binding, resource: s.buffer.as_entire_binding() });
        }
        let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(&pipeline.label),
            layout: &pipeline.layout,
            entries: &entries,
        });
        let kept = Kept {
            group: group.clone(),
            buffers: buffers.iter().map(|(_, s)| Arc::downgrade(s)).collect(),
            _pipeline: pipeline.clone(),
        };
        self.kept.insert(key, kept);
        group
    }
}
