# 16-bit real-mode guest at 0x1000: writes 0xbeef to 0x3000, "R" to port 0x3f8, then HLT
# (no in-kernel irqchip in that test, so HLT exits to the VMM).
    .code16
    .globl _start
_start:
    movw $0xbeef, 0x3000
    mov $0x3f8, %dx
    mov $'R', %al
    out %al, %dx
    hlt
