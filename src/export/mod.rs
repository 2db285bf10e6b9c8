//! Files for other runtimes: the merged model or the LoRA adapter as a GGUF
//! file that llama.cpp loads ([`gguf`]).

pub mod gguf;
