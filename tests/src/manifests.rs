//! Reading Kubernetes manifests strictly: every YAML document as the object its `apiVersion` and
//! `kind` name (k8s-openapi, Kubernetes 1.33), where an unknown kind or a field the API does not
//! have is an error. Used by the manifest checks (`tests/deploy_manifests.rs`) and by the node
//! test, which runs the containers these manifests describe (`vm_init`'s `node` suite).

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolume, PersistentVolumeClaim, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::serde::de::DeserializeOwned;
use k8s_openapi::serde::{Deserialize, Serialize};
use k8s_openapi::Resource;
use serde_json::Value;

/// One Kubernetes object of a kind the manifests may hold.
#[derive(Debug, Clone)]
pub enum Object {
    Namespace(Namespace),
    ServiceAccount(ServiceAccount),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    ConfigMap(ConfigMap),
    DaemonSet(Box<DaemonSet>),
    Pod(Box<Pod>),
    PersistentVolume(Box<PersistentVolume>),
    PersistentVolumeClaim(Box<PersistentVolumeClaim>),
}

/// The YAML documents of `text`, as JSON values (empty documents skipped).
pub fn yaml_documents(label: &str, text: &str) -> Result<Vec<Value>, String> {
    let mut values = Vec::new();
    for (index, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(document).map_err(|e| format!("{label}: document {}: {e}", index + 1))?;
        if !value.is_null() {
            values.push(value);
        }
    }
    Ok(values)
}

/// Reads `value` as the object its `apiVersion` and `kind` name; any other kind is an error.
pub fn parse_object(value: &Value) -> Result<Object, String> {
    let api_version = value.get("apiVersion").and_then(Value::as_str).ok_or("no apiVersion")?;
    let kind = value.get("kind").and_then(Value::as_str).ok_or("no kind")?;
    fn is<T: Resource>(api_version: &str, kind: &str) -> bool {
        api_version == T::API_VERSION && kind == T::KIND
    }
    let object = if is::<Namespace>(api_version, kind) {
        Object::Namespace(typed(value)?)
    } else if is::<ServiceAccount>(api_version, kind) {
        Object::ServiceAccount(typed(value)?)
    } else if is::<ClusterRole>(api_version, kind) {
        Object::ClusterRole(typed(value)?)
    } else if is::<ClusterRoleBinding>(api_version, kind) {
        Object::ClusterRoleBinding(typed(value)?)
    } else if is::<ConfigMap>(api_version, kind) {
        Object::ConfigMap(typed(value)?)
    } else if is::<DaemonSet>(api_version, kind) {
        Object::DaemonSet(Box::new(typed(value)?))
    } else if is::<Pod>(api_version, kind) {
        Object::Pod(Box::new(typed(value)?))
    } else if is::<PersistentVolume>(api_version, kind) {
        Object::PersistentVolume(Box::new(typed(value)?))
    } else if is::<PersistentVolumeClaim>(api_version, kind) {
        Object::PersistentVolumeClaim(Box::new(typed(value)?))
    } else {
        return Err(format!("{api_version} {kind} is not a kind leash's manifests hold"));
    };
    Ok(object)
}

/// Deserialises `value` as `T` and fails if any field was dropped on the way: k8s-openapi ignores
/// fields it does not know, so a typo or a field newer than Kubernetes 1.33 would pass unseen.
pub fn typed<T: DeserializeOwned + Serialize>(value: &Value) -> Result<T, String> {
    let object: T = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    let read_back = serde_json::to_value(&object).map_err(|e| e.to_string())?;
    let mut unknown = Vec::new();
    fields_lost(value, &read_back, "", &mut unknown);
    if unknown.is_empty() {
        Ok(object)
    } else {
        Err(format!("not in the Kubernetes 1.33 API: {}", unknown.join(", ")))
    }
}

/// Paths of `original` that `read_back` lacks or holds with another value.
fn fields_lost(original: &Value, read_back: &Value, path: &str, out: &mut Vec<String>) {
    match (original, read_back) {
        (Value::Object(fields), Value::Object(kept)) => {
            for (key, value) in fields {
                let at = format!("{path}.{key}");
                match kept.get(key) {
                    Some(kept_value) => fields_lost(value, kept_value, &at, out),
                    None => out.push(at),
                }
            }
        }
        (Value::Array(items), Value::Array(kept)) if items.len() == kept.len() => {
            for (index, (item, kept_item)) in items.iter().zip(kept).enumerate() {
                fields_lost(item, kept_item, &format!("{path}[{index}]"), out);
            }
        }
        (a, b) if a != b => out.push(format!("{path} (read as {b})")),
        _ => {}
    }
}
