//! Ops record work; a step is encoded and submitted once. A [`Recorder`]
//! collects dispatches (and copies) with their parameters, then `submit`
//! writes every parameter block into the device's uniform buffer, takes the
//! bind groups (kept ones where they exist: `bind_groups.rs`) and encodes
//! everything in one command buffer.

use std::sync::{Arc, OnceLock};

use super::pipelines::{CachedPipeline, PipelineKey};
use super::profile::{PendingTimes, QUERIES_PER_SET};
use super::readback::PendingRead;
use super::tensor::{DType, Storage, Tensor};
use super::Gpu;
use crate::error::{Error, Result};

enum Op {
    Dispatch {
        pipeline: Arc<CachedPipeline>,
        buffers: Vec<(u32, Arc<Storage>)>,
        params_offset: u64,
        params_size: u64,
        groups: [u32; 3],
    },
    Clear {
        dst: Arc<Storage>,
    },
    Copy {
        src: Arc<Storage>,
        src_offset: u64,
        dst: Arc<Storage>,
        dst_offset: u64,
        bytes: u64,
    },
    /// A copy into a mappable buffer at the end of the submission.
    Readback {
        src: Arc<Storage>,
        staging: wgpu::Buffer,
        bytes: u64,
        submitted: Arc<OnceLock<wgpu::SubmissionIndex>>,
    },
}

/// Records kernel launches against one [`Gpu`] until [`Recorder::submit`].
pub struct Recorder<'g> {
    gpu: &'g Gpu,
    ops: Vec<Op>,
    params: Vec<u8>,
    /// Counts this recorder open in the pool until it is submitted or dropped.
    open: OpenRecorder<'g>,
}

impl<'g> Recorder<'g> {
    pub fn new(gpu: &'g Gpu) -> Self {
        gpu.pool.recorder_opened();
        Self { gpu, ops: Vec::new(), params: Vec::new(), open: OpenRecorder(gpu) }
    }

    /// An op's output: a pooled buffer whose contents are undefined (a freed
    /// buffer's old values). For outputs the recorded work overwrites whole.
    pub fn alloc(&mut self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        Ok(Tensor::scratch(self.gpu, shape, dtype, "scratch")?.0)
    }

    /// A zero-filled pooled buffer: a reused one is cleared by recorded work,
    /// in order with everything else in the submission.
    pub fn zeros(&mut self, shape: &[usize], dtype: DType) -> Result<Tensor> {
        let (t, reused) = Tensor::scratch(self.gpu, shape, dtype, "scratch")?;
        if reused {
            self.ops.push(Op::Clear { dst: t.handle.storage.clone() });
        }
        Ok(t)
    }

    pub fn gpu(&self) -> &'g Gpu {
        self.gpu
    }

    /// Number of recorded operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Number of recorded kernel launches (copies and clears not counted).
    pub fn dispatches(&self) -> usize {
        self.ops.iter().filter(|o| matches!(o, Op::Dispatch { .. })).count()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Record one dispatch. Binding 0 is `params` (a uniform block); bindings
    /// 1.. are `tensors`, in order. Checks each binding against the device's
    /// binding limit and the grid against its dispatch limit.
    pub fn dispatch<P: bytemuck::Pod>(
        &mut self,
        key: &PipelineKey,
        params: &P,
        tensors: &[&Tensor],
        groups: [u32; 3],
    ) -> Result<()> {
        let bound: Vec<(u32, &Tensor)> = tensors.iter().enumerate().map(|(i, t)| (i as u32 + 1, *t)).collect();
        self.dispatch_bound(key, params, &bound, groups)
    }

    /// Like [`Recorder::dispatch`], with each tensor's binding number given
    /// (for entry points of one file that use different bindings).
    pub fn dispatch_bound<P: bytemuck::Pod>(
        &mut self,
        key: &PipelineKey,
        params: &P,
        bound: &[(u32, &Tensor)],
        groups: [u32; 3],
    ) -> Result<()> {
        let gpu = self.gpu;
        let tensors: Vec<&Tensor> = bound.iter().map(|(_, t)| *t).collect();
        let max_binding = gpu.max_binding_bytes();
        for t in &tensors {
            if t.bytes() > max_binding {
                return Err(Error::OverLimit {
                    what: format!("{} binding of a {:?} {} tensor", key.label(), t.shape(), t.dtype().name()),
                    bytes: t.bytes(),
                    limit: max_binding,
                    limit_name: "max_storage_buffer_binding_size",
                });
            }
        }
        if tensors.len() as u32 > gpu.limits().max_storage_buffers_per_shader_stage {
            return Err(Error::OverLimit {
                what: format!("{} storage bindings", key.label()),
                bytes: tensors.len() as u64,
                limit: gpu.limits().max_storage_buffers_per_shader_stage as u64,
                limit_name: "max_storage_buffers_per_shader_stage",
            });
        }
        let max_groups = gpu.limits().max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > max_groups) {
            return Err(Error::OverLimit {
                what: format!("{} grid {groups:?}", key.label()),
                bytes: *groups.iter().max().unwrap_or(&0) as u64,
                limit: max_groups as u64,
                limit_name: "max_compute_workgroups_per_dimension",
            });
        }
        if groups.contains(&0) {
            return Ok(());
        }
        let align = gpu.limits().min_uniform_buffer_offset_alignment as usize;
        let offset = self.params.len().div_ceil(align) * align;
        let bytes = bytemuck::bytes_of(params);
        let size = bytes.len().max(16).div_ceil(16) * 16;
        self.params.resize(offset + size, 0);
        self.params[offset..offset + bytes.len()].copy_from_slice(bytes);
        let pipeline = gpu.pipelines.get(gpu, key);
        self.ops.push(Op::Dispatch {
            pipeline,
            buffers: bound.iter().map(|(b, t)| (*b, t.handle.storage.clone())).collect(),
            params_offset: offset as u64,
            params_size: size as u64,
            groups,
        });
        Ok(())
    }

    /// Record a copy of `bytes` bytes (a multiple of 4) between tensors.
    pub fn copy(&mut self, src: &Tensor, src_offset: u64, dst: &Tensor, dst_offset: u64, bytes: u64) -> Result<()> {
        if bytes % 4 != 0 || src_offset % 4 != 0 || dst_offset % 4 != 0 {
            return Err(Error::invalid(
                "copy",
                format!("offsets and size must be multiples of 4 ({src_offset}, {dst_offset}, {bytes})"),
            ));
        }
        if src_offset + bytes > src.bytes() || dst_offset + bytes > dst.bytes() {
            return Err(Error::invalid(
                "copy",
                format!("{bytes} bytes from {src_offset} of {} into {dst_offset} of {}", src.bytes(), dst.bytes()),
            ));
        }
        if bytes > 0 {
            self.ops.push(Op::Copy {
                src: src.handle.storage.clone(),
                src_offset,
                dst: dst.handle.storage.clone(),
                dst_offset,
                bytes,
            });
        }
        Ok(())
    }

    /// Copy `t` out at the end of this submission, to be read with
    /// [`PendingRead::read`] once the submission is done, while later ones
    /// (recorded meanwhile) run: what lets decoding submit token n + 1
    /// before it reads token n.
    pub fn read_after(&mut self, t: &Tensor) -> Result<PendingRead> {
        // The whole buffer is copied (whole words); the read keeps the tensor's own bytes.
        let bytes = t.bytes();
        let staging = self.gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("read after"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let submitted = Arc::new(OnceLock::new());
        self.ops.push(Op::Readback {
            src: t.handle.storage.clone(),
            staging: staging.clone(),
            bytes,
            submitted: submitted.clone(),
        });
        Ok(PendingRead::new(staging, (t.numel() * t.dtype().size()) as u64, submitted))
    }

    /// Encode everything recorded into one command buffer and submit it.
    pub fn submit(self) -> Result<()> {
        self.encode()?.submit()
    }

    /// Encode everything recorded into one command buffer, to submit later
    /// ([`Encoded::submit`]): what lets a step be recorded and encoded while
    /// the GPU runs the last one, before an input it reads is known (a
    /// sampled token, written with [`Tensor::write`] just before the submit).
    /// The parameter blocks are written when it is submitted. Until then it
    /// counts as an open recorder (`gpu::pool`'s rule).
    pub fn encode(self) -> Result<Encoded<'g>> {
        let Recorder { gpu, ops, params: params_bytes, open } = self;
        gpu.check("before submit")?;
        if ops.is_empty() {
            return Ok(Encoded { gpu, work: None, _open: open });
        }
        let device = &gpu.device;
        let mut bind = gpu.bind_groups.lock();
        bind.forget_released();
        let params = bind.params_buffer(device, params_bytes.len() as u64);
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("step") });
        // With profiling on: one pass per dispatch, timestamps at both ends.
        let profiling = gpu.profiler.is_on();
        let dispatches = ops.iter().filter(|o| matches!(o, Op::Dispatch { .. })).count() as u32;
        let per_set = QUERIES_PER_SET / 2;
        let query_sets: Vec<wgpu::QuerySet> = if profiling {
            (0..dispatches.div_ceil(per_set))
                .map(|_| {
                    device.create_query_set(&wgpu::QuerySetDescriptor {
                        label: Some("profile"),
                        ty: wgpu::QueryType::Timestamp,
                        count: QUERIES_PER_SET,
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut labels = Vec::new();
        let mut times = None;
        let mut i = 0;
        while i < ops.len() {
            match &ops[i] {
                Op::Clear { dst } => {
                    encoder.clear_buffer(&dst.buffer, 0, None);
                    i += 1;
                }
                Op::Copy { src, src_offset, dst, dst_offset, bytes } => {
                    encoder.copy_buffer_to_buffer(&src.buffer, *src_offset, &dst.buffer, *dst_offset, *bytes);
                    i += 1;
                }
                Op::Readback { src, staging, bytes, .. } => {
                    encoder.copy_buffer_to_buffer(&src.buffer, 0, staging, 0, *bytes);
                    i += 1;
                }
                Op::Dispatch { .. } => {
                    let n = labels.len() as u32;
                    let timestamp_writes =
                        query_sets.get((n / per_set) as usize).map(|query_set| wgpu::ComputePassTimestampWrites {
                            query_set,
                            beginning_of_pass_write_index: Some(2 * (n % per_set)),
                            end_of_pass_write_index: Some(2 * (n % per_set) + 1),
                        });
                    let mut pass =
                        encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: None, timestamp_writes });
                    while let Some(Op::Dispatch { pipeline, buffers, params_offset, params_size, groups }) = ops.get(i)
                    {
                        if profiling {
                            if labels.len() as u32 > n {
                                break; // a timed pass holds one dispatch
                            }
                            labels.push(pipeline.label.clone());
                        }
                        let bind_group = bind.group(device, pipeline, &params, (*params_offset, *params_size), buffers);
                        pass.set_pipeline(&pipeline.pipeline);
                        pass.set_bind_group(0, &bind_group, &[]);
                        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
                        i += 1;
                    }
                }
            }
        }
        if profiling && dispatches > 0 {
            let bytes = dispatches as u64 * 2 * 8;
            let resolved = device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("profile"),
                size: bytes.div_ceil(wgpu::QUERY_RESOLVE_BUFFER_ALIGNMENT) * wgpu::QUERY_RESOLVE_BUFFER_ALIGNMENT,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            });
            for (k, set) in query_sets.iter().enumerate() {
                let first = k as u32 * per_set;
                let count = (dispatches - first).min(per_set);
                let offset = first as u64 * 16; // 4096 queries · 8 bytes: a multiple of 256
                encoder.resolve_query_set(set, 0..2 * count, &resolved, offset);
            }
            times = Some(PendingTimes { buffer: resolved, labels });
        }
        drop(bind);
        let readbacks = ops
            .iter()
            .filter_map(|op| match op {
                Op::Readback { submitted, .. } => Some(submitted.clone()),
                _ => None,
            })
            .collect();
        let work = Work { commands: encoder.finish(), params, params_bytes, readbacks, times };
        Ok(Encoded { gpu, work: Some(work), _open: open })
    }
}

/// A recorder counted open in the pool until dropped.
struct OpenRecorder<'g>(&'g Gpu);

impl Drop for OpenRecorder<'_> {
    fn drop(&mut self) {
        self.0.pool.recorder_closed();
    }
}

/// A step encoded by [`Recorder::encode`], not yet submitted. Dropped
/// unsubmitted, its work never runs.
pub struct Encoded<'g> {
    gpu: &'g Gpu,
    work: Option<Work>,
    _open: OpenRecorder<'g>,
}

struct Work {
    commands: wgpu::CommandBuffer,
    /// The uniform buffer its bind groups bind, and what goes into it.
    params: wgpu::Buffer,
    params_bytes: Vec<u8>,
    readbacks: Vec<Arc<OnceLock<wgpu::SubmissionIndex>>>,
    /// With profiling on: the timestamps to resolve, kept once submitted.
    times: Option<PendingTimes>,
}

impl Encoded<'_> {
    /// Write the parameter blocks and submit. The write goes into the
    /// uniform buffer the bind groups were made with (even if a later
    /// submission grew the device's), ordered after every earlier
    /// submission, so work in flight keeps reading its own parameters.
    pub fn submit(self) -> Result<()> {
        let gpu = self.gpu;
        let Some(work) = self.work else { return Ok(()) };
        let bind = gpu.bind_groups.lock(); // one write-and-submit at a time
        if !work.params_bytes.is_empty() {
            gpu.queue.write_buffer(&work.params, 0, &work.params_bytes);
        }
        let index = gpu.queue.submit([work.commands]);
        for submitted in &work.readbacks {
            let _ = submitted.set(index.clone());
        }
        if let Some(times) = work.times {
            gpu.profiler.push(times);
        }
        drop(bind);
        gpu.pool.submitted();
        gpu.check("submit")
    }
}
