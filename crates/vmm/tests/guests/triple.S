# 64-bit guest that triple-faults: an empty IDT, then a divide error
# (#DE -> #GP on the IDT limit -> #DF -> shutdown).
    .code64
    .globl _start
_start:
    lidt idt(%rip)
    xor %ecx, %ecx
    div %ecx
1:  hlt
    jmp 1b
    .balign 8
idt: .word 0
     .quad 0
