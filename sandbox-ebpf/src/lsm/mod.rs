//! BPF-LSM programs. Attached once per host (never per sandbox).

mod probe;
