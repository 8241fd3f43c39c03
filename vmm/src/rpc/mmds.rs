//! The MMDS actions on the VMM thread: `PUT /mmds/config` (a configuration section like any
//! other), and the data store behind `PUT`/`PATCH`/`GET /mmds`, before and after boot.

use std::sync::{Arc, Mutex};

use super::{Vmm, VmmAction};
use crate::builder::BuildOptions;
use crate::rpc::{ActionError, VmmData};

/// A store error as the API answers it (Firecracker's status codes: 413 over the limit).
fn store_error(e: mmds::StoreError) -> ActionError {
    match e {
        mmds::StoreError::TooLarge => ActionError::TooLarge(e.to_string()),
        e => ActionError::Failed(e.to_string()),
    }
}

impl Vmm {
    /// The MMDS data store size limit (`--mmds-size-limit`); before the store is first used.
    pub fn set_mmds_limit(&mut self, limit: usize) {
        self.mmds_limit = limit;
    }

    /// `--metadata FILE`: the store's first contents.
    pub fn load_metadata_file(&mut self, path: &str) -> Result<(), String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--metadata: cannot read `{path}`: {e}"))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("--metadata: `{path}` is not valid JSON: {e}"))?;
        let store = self.mmds_store().map_err(|e| e.to_string())?;
        let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
        store
            .put_data(value)
            .map_err(|e| format!("--metadata: `{path}`: {e}"))
    }

    /// The store, made on first use.
    fn mmds_store(&mut self) -> Result<Arc<Mutex<mmds::Mmds>>, ActionError> {
        if let Some(m) = &self.mmds {
            return Ok(m.clone());
        }
        let m = mmds::Mmds::new(self.mmds_limit)
            .map_err(|e| ActionError::Internal(format!("cannot set up the MMDS: {e}")))?;
        let m = Arc::new(Mutex::new(m));
        self.mmds = Some(m.clone());
        Ok(m)
    }

    /// The build options for a boot or restore, with the store when `mmds-config` is set (a
    /// restore reads it from the snapshot, so the store is made whenever there is one).
    pub(super) fn build_options_with_mmds(&mut self) -> Result<BuildOptions, ActionError> {
        let mut options = self.build_options.clone();
        options.mmds = Some(self.mmds_store()?);
        Ok(options)
    }

    pub(super) fn execute_mmds(&mut self, action: VmmAction) -> Result<VmmData, ActionError> {
        match action {
            VmmAction::PutMmdsConfig(config) => {
                self.pre_boot()?;
                self.resources
                    .set_mmds_config(config)
                    .map_err(|e| ActionError::Failed(e.to_string()))?;
                Ok(VmmData::Empty)
            }
            VmmAction::PutMmds(value) => {
                let store = self.mmds_store()?;
                let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
                store.put_data(value).map_err(store_error)?;
                Ok(VmmData::Empty)
            }
            VmmAction::PatchMmds(patch) => {
                let store = self.mmds_store()?;
                let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
                store.patch_data(&patch).map_err(store_error)?;
                Ok(VmmData::Empty)
            }
            VmmAction::GetMmds => {
                let store = self.mmds_store()?;
                let value = store
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .data()
                    .clone();
                Ok(VmmData::Mmds(value))
            }
            other => Err(ActionError::Internal(format!(
                "not an MMDS action: {other:?}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::BuildOptions;
    use crate::logger::LoggerSettings;
    use crate::resources::VmResources;
    use serde_json::json;

    fn vmm(limit: usize) -> Vmm {
        let mut v = Vmm::new(
            "vm-m".into(),
            VmResources::default(),
            BuildOptions::default(),
            LoggerSettings::default(),
        );
        v.set_mmds_limit(limit);
        v
    }

    fn get(v: &mut Vmm) -> serde_json::Value {
        match v.execute(VmmAction::GetMmds) {
            Ok(VmmData::Mmds(value)) => value,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn put_patch_get_before_boot() {
        let mut v = vmm(51_200);
        assert_eq!(get(&mut v), json!({}));
        let e = v
            .execute(VmmAction::PatchMmds(json!({"a": 1})))
            .unwrap_err();
        assert_eq!(e.to_string(), "The MMDS data store is not initialized.");
        v.execute(VmmAction::PutMmds(json!({"a": {"b": 1, "c": 2}, "d": 3})))
            .unwrap();
        v.execute(VmmAction::PatchMmds(
            json!({"a": {"b": null, "e": 4}, "d": [1]}),
        ))
        .unwrap();
        assert_eq!(get(&mut v), json!({"a": {"c": 2, "e": 4}, "d": [1]}));
    }

    #[test]
    fn over_the_limit_is_413_and_changes_nothing() {
        let mut v = vmm(16);
        v.execute(VmmAction::PutMmds(json!({"a": "b"}))).unwrap();
        let e = v
            .execute(VmmAction::PutMmds(json!({"a": "0123456789abcdef"})))
            .unwrap_err();
        let r = crate::rpc::response_for(Err(e));
        assert_eq!(r.status, 413);
        let e = v
            .execute(VmmAction::PatchMmds(json!({"x": "0123456789abcdef"})))
            .unwrap_err();
        assert!(matches!(e, ActionError::TooLarge(_)), "{e:?}");
        assert_eq!(get(&mut v), json!({"a": "b"}));
    }

    #[test]
    fn config_needs_existing_interfaces() {
        let mut v = vmm(51_200);
        let config: crate::config::MmdsConfig =
            serde_json::from_value(json!({"network_interfaces": ["eth0"]})).unwrap();
        let e = v
            .execute(VmmAction::PutMmdsConfig(config.clone()))
            .unwrap_err();
        assert!(e.to_string().contains("`eth0` does not exist"), "{e}");
        assert!(v.resources.config().mmds_config.is_none());
    }
}
