# 64-bit guest that executes `lock cmpxchg16b`, which kvm_pvm's emulator cannot run
# (KVM_EXIT_INTERNAL_ERROR there); on hardware virtualization it runs and the guest resets.
    .code64
    .globl _start
_start:
    lea buf(%rip), %rdi
    xor %eax, %eax
    xor %edx, %edx
    xor %ebx, %ebx
    xor %ecx, %ecx
    lock cmpxchg16b (%rdi)
    mov $0x3f8, %dx
    mov $'X', %al
    out %al, %dx
    mov $0xfe, %al
    out %al, $0x64
1:  hlt
    jmp 1b
    .balign 16
buf: .quad 0, 0
