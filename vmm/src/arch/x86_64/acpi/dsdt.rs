//! The DSDT: the devices a guest finds through ACPI and the soft-off sleep state.

use acpi_tables::aml::{
    self, Device, EISAName, Interrupt, Memory32Fixed, Method, Name, Notify, Package, Path,
    ResourceTemplate, Scope, IO,
};
use acpi_tables::sdt::Sdt;
use acpi_tables::Aml;
use devices::legacy::{COM1_IRQ, COM1_PORT_BASE, SLEEP_TYPE_S5};

use super::{MmioDeviceInfo, Platform, OEM_ID, OEM_REVISION, OEM_TABLE_ID};

/// The ACPI id Linux's virtio-mmio driver binds to.
const VIRTIO_MMIO_HID: &str = "LNRO0005";
/// The ids Linux's and Windows' VM generation ID drivers look for.
const VMGENID_HID: &str = "VMGENCTR";
const VMGENID_CID: &str = "VM_Gen_Counter";
/// The Generic Event Device (hardware-reduced ACPI's event source).
const GED_HID: &str = "ACPI0013";
/// The notification that tells the VM generation ID driver to re-read the id.
const VMGENID_NOTIFY: u8 = 0x80;
const KBD_IRQ: u32 = 1;
const DSDT_REVISION: u8 = 2;

/// An edge-triggered, active-high, exclusive interrupt: how every ISA-bus line of this machine
/// is wired (the MP table says the same with "conforms to the bus").
fn isa_interrupt(irq: u32) -> Interrupt {
    Interrupt::new(true, true, false, false, irq)
}

fn bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut out = Vec::new();
    aml.to_aml_bytes(&mut out);
    out
}

fn com1() -> Vec<u8> {
    let port = COM1_PORT_BASE as u16;
    let irq = isa_interrupt(COM1_IRQ);
    let io = IO::new(port, port, 1, 8);
    let crs = ResourceTemplate::new(vec![&io, &irq]);
    bytes(&Device::new(
        "COM1".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0501")),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new("_CRS".into(), &crs),
        ],
    ))
}

fn keyboard() -> Vec<u8> {
    let data = IO::new(0x60, 0x60, 1, 1);
    let command = IO::new(0x64, 0x64, 1, 1);
    let irq = isa_interrupt(KBD_IRQ);
    let crs = ResourceTemplate::new(vec![&data, &command, &irq]);
    bytes(&Device::new(
        "PS2K".into(),
        vec![
            &Name::new("_HID".into(), &EISAName::new("PNP0303")),
            &Name::new("_CRS".into(), &crs),
        ],
    ))
}

fn virtio_mmio(index: usize, dev: &MmioDeviceInfo) -> Vec<u8> {
    // Four-character names: V000..VFFF covers far more devices than the IOAPIC has lines.
    let name = format!("V{index:03X}");
    let window = Memory32Fixed::new(true, dev.base as u32, dev.size as u32);
    let irq = isa_interrupt(dev.irq);
    let crs = ResourceTemplate::new(vec![&window, &irq]);
    let uid = index as u32;
    bytes(&Device::new(
        name.as_str().into(),
        vec![
            &Name::new("_HID".into(), &VIRTIO_MMIO_HID),
            &Name::new("_UID".into(), &uid),
            &Name::new("_CRS".into(), &crs),
        ],
    ))
}

fn vmgenid(addr: u64) -> Vec<u8> {
    // ADDR: the id's guest-physical address as a package of two 32-bit halves, which is what
    // the drivers evaluate.
    let low = addr as u32;
    let high = (addr >> 32) as u32;
    let addr_package = Package::new(vec![&low, &high]);
    bytes(&Device::new(
        "VGEN".into(),
        vec![
            &Name::new("_HID".into(), &VMGENID_HID),
            &Name::new("_CID".into(), &VMGENID_CID),
            &Name::new("_DDN".into(), &VMGENID_CID),
            &Name::new("ADDR".into(), &addr_package),
        ],
    ))
}

fn generic_event_device(irq: u32) -> Vec<u8> {
    // One event source: whatever fires the GED's line means "the generation id changed".
    let interrupt = isa_interrupt(irq);
    let crs = ResourceTemplate::new(vec![&interrupt]);
    let vgen = Path::new("\\_SB_.VGEN");
    let notify = Notify::new(&vgen, &VMGENID_NOTIFY);
    let evt = Method::new("_EVT".into(), 1, true, vec![&notify]);
    bytes(&Device::new(
        "GED_".into(),
        vec![
            &Name::new("_HID".into(), &GED_HID),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new("_CRS".into(), &crs),
            &evt,
        ],
    ))
}

/// The whole DSDT.
pub fn build(platform: &Platform) -> Vec<u8> {
    let mut devices: Vec<Vec<u8>> = vec![com1(), keyboard()];
    devices.extend(
        platform
            .virtio
            .iter()
            .enumerate()
            .map(|(i, d)| virtio_mmio(i, d)),
    );
    devices.push(vmgenid(platform.vmgenid_addr));
    devices.push(generic_event_device(platform.ged_irq));
    let raw: Vec<RawAml> = devices.into_iter().map(RawAml).collect();
    let children: Vec<&dyn Aml> = raw.iter().map(|r| r as &dyn Aml).collect();
    let sb = Scope::new("\\_SB_".into(), children);
    // \_S5: SLP_TYPa, SLP_TYPb (then two reserved values).
    let s5_type = SLEEP_TYPE_S5;
    let s5 = Package::new(vec![&s5_type, &s5_type, &aml::ZERO, &aml::ZERO]);
    let s5 = Name::new("_S5_".into(), &s5);

    let mut dsdt = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    dsdt.append_slice(&bytes(&sb));
    dsdt.append_slice(&bytes(&s5));
    dsdt.as_slice().to_vec()
}

/// Already-encoded AML, so devices built separately can share one scope.
struct RawAml(Vec<u8>);

impl Aml for RawAml {
    fn to_aml_bytes(&self, sink: &mut dyn acpi_tables::AmlSink) {
        sink.vec(&self.0);
    }
}
