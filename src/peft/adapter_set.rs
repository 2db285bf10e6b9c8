//! Several adapters on one base, as PEFT's `PeftModel` keeps them
//! (`load_adapter(name)`, `set_adapter(name)`, `disable_adapter()`,
//! `delete_adapter(name)`): the base [`Model`](crate::model::Model) is loaded
//! once and never touched; a forward takes [`AdapterSet::active`].

use std::collections::BTreeMap;

use super::adapter::Adapter;
use crate::error::{Error, Result};

/// Named adapters, at most one active.
#[derive(Debug, Default)]
pub struct AdapterSet {
    adapters: BTreeMap<String, Adapter>,
    active: Option<String>,
}

impl AdapterSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `adapter` as `name` (PEFT's `load_adapter`); the first one added
    /// becomes active. A name in use is an error (remove it first).
    pub fn insert(&mut self, name: &str, adapter: Adapter) -> Result<()> {
        if name.is_empty() {
            return Err(Error::invalid("AdapterSet::insert", "an adapter needs a name"));
        }
        if self.adapters.contains_key(name) {
            return Err(Error::invalid("AdapterSet::insert", format!("an adapter named {name:?} is already loaded")));
        }
        self.adapters.insert(name.to_string(), adapter);
        if self.active.is_none() {
            self.active = Some(name.to_string());
        }
        Ok(())
    }

    /// Makes `name` the active adapter, or none with `None` (PEFT's
    /// `set_adapter` / `disable_adapter`).
    pub fn set_active(&mut self, name: Option<&str>) -> Result<()> {
        if let Some(n) = name {
            if !self.adapters.contains_key(n) {
                return Err(Error::invalid(
                    "AdapterSet::set_active",
                    format!("no adapter named {n:?}; loaded: {:?}", self.names()),
                ));
            }
        }
        self.active = name.map(str::to_string);
        Ok(())
    }

    /// The adapter forwards should run with (`None`: the base alone).
    pub fn active(&self) -> Option<&Adapter> {
        self.active.as_ref().and_then(|n| self.adapters.get(n))
    }

    pub fn active_name(&self) -> Option<&str> {
        self.active.as_deref()
    }

    pub fn get(&self, name: &str) -> Option<&Adapter> {
        self.adapters.get(name)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Adapter> {
        self.adapters.get_mut(name)
    }

    /// Removes and returns `name` (PEFT's `delete_adapter`); if it was active,
    /// none is.
    pub fn remove(&mut self, name: &str) -> Result<Adapter> {
        let a = self
            .adapters
            .remove(name)
            .ok_or_else(|| Error::invalid("AdapterSet::remove", format!("no adapter named {name:?}")))?;
        if self.active.as_deref() == Some(name) {
            self.active = None;
        }
        Ok(a)
    }

    /// Loaded names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.adapters.keys().cloned().collect()
    }

    /// GPU bytes of every loaded adapter.
    pub fn bytes(&self) -> u64 {
        self.adapters.values().map(Adapter::bytes).sum()
    }
}
