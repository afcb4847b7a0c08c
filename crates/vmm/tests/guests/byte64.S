# The start-up benchmark's guest: the smallest 64-bit guest that does something visible.
# Entered in long mode by the Linux 64-bit boot protocol (loaded as an ELF at 1 MiB); writes
# one byte to COM1 and resets through the i8042 (command 0xFE), which ends the VMM process.
    .code64
    .globl _start
_start:
    mov $0x3f8, %dx
    mov $'K', %al
    out %al, %dx
    mov $0xfe, %al
    out %al, $0x64
1:  hlt
    jmp 1b
