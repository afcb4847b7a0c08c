# A static x86_64 Linux user program used as /init in the smoke test's initramfs: prints a
# marker on the console, signals boot complete on port 0x3f0 (ioperm first), and reboots
# (the VMM ends with the reset exit code when the kernel has reboot=k).
    .code64
    .globl _start
_start:
    mov $1, %eax                 # write(1, marker, len)
    mov $1, %edi
    lea marker(%rip), %rsi
    mov $(marker_end - marker), %edx
    syscall
    mov $173, %eax               # ioperm(0x3f0, 1, 1)
    mov $0x3f0, %edi
    mov $1, %esi
    mov $1, %edx
    syscall
    test %eax, %eax
    jnz 1f
    mov $0x3f0, %dx
    mov $123, %al
    out %al, %dx
1:  mov $169, %eax               # reboot(MAGIC1, MAGIC2, LINUX_REBOOT_CMD_RESTART, 0)
    mov $0xfee1dead, %edi
    mov $0x28121969, %esi
    mov $0x01234567, %edx
    xor %r10d, %r10d
    syscall
2:  jmp 2b
marker: .ascii "KOBAKO-USERSPACE-UP\n"
marker_end:
