# 64-bit guest that prints '.' to the serial port forever, with a busy delay between dots:
# used to see pause/resume stop and restart guest progress.
    .code64
    .globl _start
_start:
    mov $0x3f8, %dx
1:  mov $'.', %al
    out %al, %dx
    mov $20000, %ecx
2:  dec %ecx
    jnz 2b
    jmp 1b
