# 64-bit guest that signals boot complete, then prints '.' to the serial port forever with a
# busy delay between dots: used to see pause/resume stop and restart guest progress.
    .code64
    .globl _start
_start:
    mov $0x3f0, %dx
    mov $123, %al
    out %al, %dx
    mov $0x3f8, %dx
1:  mov $'.', %al
    out %al, %dx
    mov $20000, %ecx
2:  dec %ecx
    jnz 2b
    jmp 1b
