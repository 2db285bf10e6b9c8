//! The one error type for everything a user can cause: bad files, shapes that
//! don't fit, a device too small, a device that goes away. Messages say what was
//! wrong and where; `assert!` is kept for the code's own invariants.

use thiserror::Error;

/// Everything that can go wrong in webpeft that is not a bug in webpeft.
#[derive(Debug, Error)]
pub enum Error {
    #[error("no GPU adapter is available{0}")]
    NoAdapter(String),

    #[error("could not create a GPU device on {adapter}: {message}")]
    DeviceRequest { adapter: String, message: String },

    #[error("the GPU device was lost: {0}")]
    DeviceLost(String),

    #[error("the GPU reported an error during {context}: {message}")]
    Gpu { context: String, message: String },

    #[error("timed out after {seconds} s waiting for the GPU during {context}")]
    Timeout { context: String, seconds: u64 },

    #[error("{what} needs {bytes} bytes, over the device's {limit_name} of {limit} bytes")]
    OverLimit { what: String, bytes: u64, limit: u64, limit_name: &'static str },

    #[error("{op}: {detail}")]
    Shape { op: &'static str, detail: String },

    #[error("{op}: argument `{arg}` must be {expected}, got {got}")]
    DType { op: &'static str, arg: &'static str, expected: &'static str, got: &'static str },

    #[error("invalid argument to {op}: {detail}")]
    InvalidArgument { op: &'static str, detail: String },

    /// A training option out of its range (a [`TrainRecipe`](crate::train::recipe::TrainRecipe)
    /// field, or the method's name); `option` is the recipe's name for it
    /// (`seq_len`, `lr`), which each front end spells its own way.
    #[error("training option `{option}`: {detail}")]
    TrainOption { option: &'static str, detail: String },

    #[error(transparent)]
    Quant(#[from] crate::quant::QuantError),

    /// A `config.json` field that is missing, malformed, inconsistent or not
    /// supported; `field` is its JSON key (`rope_scaling.rope_type`, `layer_types[3]`).
    #[error("config.json: field `{field}`: {detail}")]
    Config { field: String, detail: String },

    /// A model file that is absent or malformed as a whole (a safetensors
    /// header, an index, a file name).
    #[error("{file}: {detail}")]
    File { file: String, detail: String },

    /// One tensor of a checkpoint: missing, unexpected, wrongly shaped, of an
    /// unsupported dtype, or outside its file. `file` is the shard that holds it
    /// (or the model folder when it is missing).
    #[error("tensor `{tensor}` ({file}): {detail}")]
    Checkpoint { tensor: String, file: String, detail: String },

    /// A tokenizer file (`tokenizer.json`, `tokenizer_config.json`) that cannot
    /// be parsed or is not supported, or a failure of the tokenizer on a text
    /// or ids; `file` names the file whose content is at fault.
    #[error("{file}: {detail}")]
    Tokenizer { file: String, detail: String },

    /// An `adapter_config.json` field that is missing, malformed or
    /// inconsistent with the model; `field` is its JSON key (`peft_type`, `r`,
    /// `target_modules[2]`).
    #[error("adapter_config.json: field `{field}`: {detail}")]
    AdapterConfig { field: String, detail: String },

    /// An `adapter_config.json` option that is valid for PEFT but that webpeft
    /// does not implement (`use_dora`, a regex `target_modules`, …).
    #[error("adapter_config.json: field `{field}`: not supported: {detail}")]
    AdapterUnsupported { field: String, detail: String },

    /// One tensor of an adapter file: missing, unexpected, wrongly shaped or of
    /// an unsupported dtype. `file` is the adapter file (`adapter_model.safetensors`).
    #[error("adapter tensor `{tensor}` ({file}): {detail}")]
    AdapterTensor { tensor: String, file: String, detail: String },

    /// A training-data record that cannot be used: malformed JSON, a missing
    /// or mistyped field, a chat that the template cannot render. `source` is
    /// the dataset's name, `line` is 1-based.
    #[error("{source_name}, line {line}: {detail}")]
    Data { source_name: String, line: usize, detail: String },

    /// A dataset with no usable example (an empty file, or every example
    /// filtered out).
    #[error("{source_name}: the dataset is empty: {detail}")]
    EmptyDataset { source_name: String, detail: String },

    /// An AdapterHub `adapter_config.json` field that is missing, malformed or
    /// not supported (bottleneck adapters).
    #[error("adapter_config.json (AdapterHub): field `{field}`: {detail}")]
    BottleneckConfig { field: String, detail: String },

    /// A training loss or gradient norm that is NaN or infinite. The adapter
    /// and the optimizer state are left as they were after step `step - 1`.
    #[error(
        "training step {step}: the {what} is {value}; the adapter and optimizer state are kept from the last good step"
    )]
    NonFinite { step: u64, what: &'static str, value: f32 },

    /// A model, adapter or option the GGUF export (llama.cpp) cannot take:
    /// `what` names the file or feature.
    #[error("GGUF export: {what}: {detail}")]
    GgufExport { what: String, detail: String },

    /// The operating system failed to read a file.
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
}

/// Shorthand used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Shape { op, detail: detail.into() }
    }
    pub(crate) fn invalid(op: &'static str, detail: impl Into<String>) -> Self {
        Error::InvalidArgument { op, detail: detail.into() }
    }
}
