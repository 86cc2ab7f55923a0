/*
 * switch_aarch64.S - coroutine context switch, AArch64 (AAPCS64).
 *
 * int conc__ctx_switch(conc__ctx *from, conc__ctx *to, void *value,
 *                      void **out)
 *   x0 = from, x1 = to, x2 = value, x3 = out.  Saves the caller in *from
 *   and continues *to, which receives value: a context suspended in
 *   conc__ctx_switch stores it in its own pending *out (unless NULL) and
 *   returns 0; a fresh context calls conc__coro_entry(value).
 *
 * A suspended context is its stack pointer; the stack holds a 176-byte
 * frame, upwards:
 *
 *   sp+0    d8,  d9
 *   sp+16   d10, d11
 *   sp+32   d12, d13
 *   sp+48   d14, d15
 *   sp+64   x19, x20
 *   sp+80   x21, x22
 *   sp+96   x23, x24
 *   sp+112  x25, x26
 *   sp+128  x27, x28
 *   sp+144  x29 (fp), x30 (lr: where the context continues)
 *   sp+160  FPCR
 *   sp+168  out
 *
 * These are exactly the callee-saved registers of AAPCS64 (only the low 64
 * bits of v8-v15 are), plus FPCR, whose rounding-mode, flush-to-zero and
 * trap-enable fields a called function must preserve.  FPSR (the cumulative
 * exception flags) stays with the thread.  FPCR is written only when the
 * target's differs from the current one (msr fpcr can be slow).  The
 * target continues with ret, which is what branch target identification
 * allows for return sites.
 *
 * A fresh context (conc__ctx_make) is the same frame with zeroed registers,
 * out = NULL, the creator's FPCR and lr = conc__ctx_start: the first switch
 * to it continues in conc__ctx_start, which calls conc__coro_entry(value).
 * The CFI marks conc__ctx_start as the outermost frame (x30 undefined) and
 * x29 is 0, so debuggers and unwinders stop there.
 */

#if defined(__ARM_FEATURE_BTI_DEFAULT) && __ARM_FEATURE_BTI_DEFAULT
#define BTI_C bti c
#else
#define BTI_C
#endif

#define FRAME 176

	.text

	.p2align 4
	.globl	conc__ctx_switch
	.hidden	conc__ctx_switch
	.type	conc__ctx_switch, %function
conc__ctx_switch:
	.cfi_startproc
	BTI_C
	sub	sp, sp, #FRAME
	.cfi_def_cfa_offset FRAME
	stp	d8, d9, [sp, #0]
	stp	d10, d11, [sp, #16]
	stp	d12, d13, [sp, #32]
	stp	d14, d15, [sp, #48]
	stp	x19, x20, [sp, #64]
	stp	x21, x22, [sp, #80]
	stp	x23, x24, [sp, #96]
	stp	x25, x26, [sp, #112]
	stp	x27, x28, [sp, #128]
	stp	x29, x30, [sp, #144]
	.cfi_rel_offset d8, 0
	.cfi_rel_offset d9, 8
	.cfi_rel_offset d10, 16
	.cfi_rel_offset d11, 24
	.cfi_rel_offset d12, 32
	.cfi_rel_offset d13, 40
	.cfi_rel_offset d14, 48
	.cfi_rel_offset d15, 56
	.cfi_rel_offset x19, 64
	.cfi_rel_offset x20, 72
	.cfi_rel_offset x21, 80
	.cfi_rel_offset x22, 88
	.cfi_rel_offset x23, 96
	.cfi_rel_offset x24, 104
	.cfi_rel_offset x25, 112
	.cfi_rel_offset x26, 120
	.cfi_rel_offset x27, 128
	.cfi_rel_offset x28, 136
	.cfi_rel_offset x29, 144
	.cfi_rel_offset x30, 152
	mrs	x9, fpcr		/* x9: our FPCR */
	stp	x9, x3, [sp, #160]	/* FPCR, out */
	mov	x10, sp
	str	x10, [x0]		/* from->sp */
	ldr	x10, [x1]
	mov	sp, x10			/* continue on the target's stack; its
					   frame has the same layout, so the
					   CFI stays valid */
	ldr	x11, [sp, #160]
	cmp	x9, x11
	b.ne	.Lload_fpcr
.Lfp_done:
	.cfi_remember_state
	ldp	d8, d9, [sp, #0]
	ldp	d10, d11, [sp, #16]
	ldp	d12, d13, [sp, #32]
	ldp	d14, d15, [sp, #48]
	ldp	x19, x20, [sp, #64]
	ldp	x21, x22, [sp, #80]
	ldp	x23, x24, [sp, #96]
	ldp	x25, x26, [sp, #112]
	ldp	x27, x28, [sp, #128]
	ldp	x29, x30, [sp, #144]
	ldr	x3, [sp, #168]		/* the target's out */
	add	sp, sp, #FRAME
	.cfi_def_cfa_offset 0
	.cfi_restore d8
	.cfi_restore d9
	.cfi_restore d10
	.cfi_restore d11
	.cfi_restore d12
	.cfi_restore d13
	.cfi_restore d14
	.cfi_restore d15
	.cfi_restore x19
	.cfi_restore x20
	.cfi_restore x21
	.cfi_restore x22
	.cfi_restore x23
	.cfi_restore x24
	.cfi_restore x25
	.cfi_restore x26
	.cfi_restore x27
	.cfi_restore x28
	.cfi_restore x29
	.cfi_restore x30
	cbz	x3, 1f
	str	x2, [x3]		/* *out = value */
1:	mov	w0, #0			/* returns 0 */
	ret
	.cfi_restore_state
.Lload_fpcr:
	msr	fpcr, x11
	b	.Lfp_done
	.cfi_endproc
	.size	conc__ctx_switch, .-conc__ctx_switch

/* conc__ctx_make(conc__ctx *c, void *lo, void *hi): x0 = c, x2 = hi.
 * Writes the whole frame (out = NULL, FPCR = the caller's). */
	.p2align 4
	.globl	conc__ctx_make
	.hidden	conc__ctx_make
	.type	conc__ctx_make, %function
conc__ctx_make:
	.cfi_startproc
	BTI_C
	and	x2, x2, #-16
	sub	x2, x2, #FRAME		/* after the switch's add, sp = hi */
	stp	xzr, xzr, [x2, #0]
	stp	xzr, xzr, [x2, #16]
	stp	xzr, xzr, [x2, #32]
	stp	xzr, xzr, [x2, #48]
	stp	xzr, xzr, [x2, #64]
	stp	xzr, xzr, [x2, #80]
	stp	xzr, xzr, [x2, #96]
	stp	xzr, xzr, [x2, #112]
	stp	xzr, xzr, [x2, #128]
	adr	x3, conc__ctx_start
	stp	xzr, x3, [x2, #144]	/* x29 = 0 (end of the frame chain), lr */
	mrs	x4, fpcr
	stp	x4, xzr, [x2, #160]
	str	x2, [x0]
	ret
	.cfi_endproc
	.size	conc__ctx_make, .-conc__ctx_make

/* The first code of a fresh context: x2 holds the value of the switch. */
	.p2align 4
	.type	conc__ctx_start, %function
conc__ctx_start:
	.cfi_startproc
	.cfi_undefined x30
	mov	x0, x2
	bl	conc__coro_entry
	brk	#0			/* conc__coro_entry never returns */
	.cfi_endproc
	.size	conc__ctx_start, .-conc__ctx_start

/* The note claims what this object was built for: BTI only when the entry
 * points begin with "bti c", PAC only when return addresses are signed (no
 * signed pointer is stored here, so signing elsewhere is compatible). */
#if defined(__ARM_FEATURE_BTI_DEFAULT) && __ARM_FEATURE_BTI_DEFAULT
#define NOTE_BTI 1
#else
#define NOTE_BTI 0
#endif
#if defined(__ARM_FEATURE_PAC_DEFAULT) && __ARM_FEATURE_PAC_DEFAULT
#define NOTE_PAC 2
#else
#define NOTE_PAC 0
#endif

#if NOTE_BTI || NOTE_PAC
	.section .note.gnu.property, "a"
	.p2align 3
	.word	4			/* name size */
	.word	16			/* descriptor size */
	.word	5			/* NT_GNU_PROPERTY_TYPE_0 */
	.asciz	"GNU"
	.word	0xc0000000		/* GNU_PROPERTY_AARCH64_FEATURE_1_AND */
	.word	4
	.word	NOTE_BTI | NOTE_PAC	/* GNU_PROPERTY_AARCH64_FEATURE_1_BTI, _PAC */
	.word	0
#endif

/* The stacks stay non-executable. */
	.section .note.GNU-stack, "", %progbits
