/*
 * switch_x86_64.S - coroutine context switch, x86-64 System V ABI.
 *
 * int conc__ctx_switch(conc__ctx *from, conc__ctx *to, void *value,
 *                      void **out)
 *   rdi = from, rsi = to, rdx = value, rcx = out.  Saves the caller in
 *   *from and continues *to, which receives value: a context suspended in
 *   conc__ctx_switch stores it in its own pending *out (unless NULL) and
 *   returns 0; a fresh context calls conc__coro_entry(value).
 *
 * A suspended context is its stack pointer and, beside it in the
 * conc__ctx, its MXCSR (4 bytes) and x87 control word (2 bytes); the stack
 * holds, upwards:
 *
 *   sp+0   out
 *   sp+8   r15
 *   sp+16  r14
 *   sp+24  r13
 *   sp+32  r12
 *   sp+40  rbx
 *   sp+48  rbp
 *   sp+56  return address
 *
 * Only the callee-saved registers of the ABI are kept: the caller of
 * conc__ctx_switch has saved everything else, as for any call.  MXCSR's
 * control bits (6-15) and the x87 control word are callee-saved too: each
 * context keeps its own, stored on the way out and loaded on the way in,
 * always (Boost.Context's jump_fcontext does the same).  MXCSR's status
 * flags (0-5) travel with them (the ABI lets a call change them, so each
 * context sees the flags it raised itself).  Kept in the conc__ctx, whose
 * stack pointer the switch reads anyway, they need no stack slot to make
 * and release.
 * Loading unconditionally is cheaper than comparing first: the comparison
 * needs the current state in a register, and the only way there is a load
 * from the stmxcsr's own store, which some processors (AMD Zen) do not
 * forward: about 3 ns a switch, against about 1 ns for ldmxcsr and fldcw.
 *
 * The switch continues the target with an indirect jump to its return
 * address, not with ret: the return-stack predictor always guesses the
 * caller of the current context and would miss on every switch, while the
 * indirect-branch predictor learns where switches go.  The C side calls
 * this as a tail call, so a loop of switches executes no ret at all.
 *
 * conc__ctx_switch_same_site (the hub's switches between greenlets) is the
 * same but for one case: when the target continues where the caller would
 * return (two greenlets yielding to each other from the same call site),
 * it continues with ret, which is then predicted right and keeps the return
 * stack in step, so the returns that follow in the target are predicted
 * too (after the jump they would all miss, the return stack being one entry
 * off).
 *
 * A fresh context (conc__ctx_make) is the same frame with zeroed registers,
 * out pointing at the out slot itself, the creator's floating-point control
 * state and conc__ctx_start as return address: the first switch to it
 * stores its value in that slot and continues in conc__ctx_start, which
 * reads it back and calls conc__coro_entry(value) with a 16-byte aligned
 * stack.  (So no register convention carries the value: each switch
 * function stores it from wherever its caller passed it.)  The CFI marks conc__ctx_start as the outermost frame (rip
 * undefined) and rbp is 0, so debuggers and unwinders stop there.
 */

/* Continues at r11 with ret: r11 goes back where the return address was
 * (the CFA is rsp + 0 after the frame's pops), which the CFI says for the
 * push's one-instruction window, so that an unwinder that stops there
 * (perf, a profiler's signal) still finds the return address. */
#include "coro_abi.h"

#define RET_TO_R11 .cfi_remember_state; pushq %r11; .cfi_adjust_cfa_offset 8; \
	.cfi_offset %rip, -8; ret; .cfi_restore_state

#if defined(__CET__) && (__CET__ & 1)
/* Indirect-branch tracking: entry points start with endbr64, and the switch
 * continues with ret (the return sites it reaches have no endbr64). */
#define ENDBR endbr64
#define CONTINUE_AT_R11 RET_TO_R11
#define SAME_SITE_CONTINUE
#else
#define ENDBR
#define CONTINUE_AT_R11 jmp *%r11
/* r10: the caller's return address, loaded on entry. */
#define SAME_SITE_CONTINUE cmpq %r10, %r11; jne 2f; RET_TO_R11; 2:
#endif

	.text

/* The machine switch, from the first push to the jump; same_site 1 makes
 * the variant for switches between coroutines that usually continue where
 * the caller would return.  from, to, value and out name the registers of
 * the arguments; the target receives value through its out. */
.macro	SWITCH_BODY same_site, from, to, value, out, ctx=0
	.if \same_site
	movq	(%rsp), %r10		/* our return address */
	.endif
	pushq	%rbp
	.cfi_adjust_cfa_offset 8
	.cfi_rel_offset %rbp, 0
	pushq	%rbx
	.cfi_adjust_cfa_offset 8
	.cfi_rel_offset %rbx, 0
	pushq	%r12
	.cfi_adjust_cfa_offset 8
	.cfi_rel_offset %r12, 0
	pushq	%r13
	.cfi_adjust_cfa_offset 8
	.cfi_rel_offset %r13, 0
	pushq	%r14
	.cfi_adjust_cfa_offset 8
	.cfi_rel_offset %r14, 0
	pushq	%r15
	.cfi_adjust_cfa_offset 8
	.cfi_rel_offset %r15, 0
	pushq	\out			/* out */
	.cfi_adjust_cfa_offset 8
	stmxcsr	\ctx+8(\from)		/* from->mxcsr */
	fnstcw	\ctx+12(\from)		/* from->fpcw */
	movq	%rsp, \ctx(\from)	/* from->sp */
	movq	\ctx(\to), %rsp		/* continue on the target's stack; its
					   frame has the layout described above,
					   so the CFI stays valid */
	ldmxcsr	\ctx+8(\to)
	fldcw	\ctx+12(\to)
	popq	%rcx			/* the target's out */
	.cfi_adjust_cfa_offset -8
	popq	%r15
	.cfi_adjust_cfa_offset -8
	.cfi_restore %r15
	popq	%r14
	.cfi_adjust_cfa_offset -8
	.cfi_restore %r14
	popq	%r13
	.cfi_adjust_cfa_offset -8
	.cfi_restore %r13
	popq	%r12
	.cfi_adjust_cfa_offset -8
	.cfi_restore %r12
	popq	%rbx
	.cfi_adjust_cfa_offset -8
	.cfi_restore %rbx
	popq	%rbp
	.cfi_adjust_cfa_offset -8
	.cfi_restore %rbp
	popq	%r11			/* where the target continues */
	.cfi_adjust_cfa_offset -8
	.cfi_register %rip, %r11
	testq	%rcx, %rcx
	jz	1f
	movq	\value, (%rcx)		/* *out = value */
1:	xorl	%eax, %eax		/* returns 0 */
	.if \same_site
	SAME_SITE_CONTINUE
	.endif
	CONTINUE_AT_R11
.endm

/* A switch function: from, to, value and out name the registers of its
 * arguments (conc__ctx_switch_to takes them in another order). */
.macro	CTX_SWITCH name, same_site, from=%rdi, to=%rsi, value=%rdx, out=%rcx
	.p2align 4
	.globl	\name
	.hidden	\name
	.type	\name, @function
\name:
	.cfi_startproc
	ENDBR
	SWITCH_BODY \same_site, \from, \to, \value, \out
	.cfi_endproc
	.size	\name, .-\name
.endm

	CTX_SWITCH conc__ctx_switch, 0
	CTX_SWITCH conc__ctx_switch_same_site, 1
/* conc__ctx_switch_to(to, value, out, from): conc_coro_switch's own
 * arguments (target, value, out) stay where they came, only from is added. */
	CTX_SWITCH conc__ctx_switch_to, 0, %rcx, %rdi, %rsi, %rdx

#if CONC_CORO_SWITCH_ASM
/*
 * int conc_coro_switch(conc_coro *target, void *value, void **out)
 *   rdi = target, rsi = value, rdx = out.  The common case of coro.c's
 *   switch in assembly, straight into the machine switch: every operation
 *   here costs about as much as one of the switch's own (ldmxcsr and fldcw
 *   keep the processor from overlapping two switches: sixteen nops
 *   anywhere in the path add about 10% to it), and C spent seven more (the
 *   jump between the two functions, register moves, a split test).  The common case: the thread's state made, a target of this
 *   thread with a guarded stack of its own while no chore is pending (its
 *   key equals conc__coro_tls.fast: see coro.c), new or suspended (an even
 *   state: neither dead nor the caller).  Then: the caller becomes
 *   suspended, the target running and current (which makes its owner
 *   identity conc__owner_id()'s), and the machine switch continues it.  Anything else (NULL
 *   included) goes to conc__coro_switch_slow with the arguments untouched.
 *   The thread-local block is reached through the initial-exec offset,
 *   as C reaches it.
 */
	.p2align 6
	.globl	conc_coro_switch
	.type	conc_coro_switch, @function
conc_coro_switch:
	.cfi_startproc
	ENDBR
	testq	%rdi, %rdi
	jz	.Lswitch_slow
	movq	conc__coro_tls@gottpoff(%rip), %rax
	movq	%fs:CONC__TLS_FAST(%rax), %r8
	cmpq	%r8, CONC__CORO_KEY(%rdi)
	jne	.Lswitch_slow
	testb	$1, CONC__CORO_STATE(%rdi)
	jnz	.Lswitch_slow
	movq	%fs:CONC__TLS_CURRENT(%rax), %rcx	/* self */
	movb	$CONC__CORO_SUSPENDED, CONC__CORO_STATE(%rcx)
	movb	$CONC__CORO_RUNNING, CONC__CORO_STATE(%rdi)
	movq	%rdi, %fs:CONC__TLS_CURRENT(%rax)
	.cfi_remember_state
	SWITCH_BODY 0, %rcx, %rdi, %rsi, %rdx, CONC__CORO_CTX
	.cfi_restore_state
.Lswitch_slow:
	jmp	conc__coro_switch_slow
	.cfi_endproc
	.size	conc_coro_switch, .-conc_coro_switch
#endif

/* conc__ctx_make(conc__ctx *c, void *lo, void *hi): rdi = c, rdx = hi. */
	.p2align 4
	.globl	conc__ctx_make
	.hidden	conc__ctx_make
	.type	conc__ctx_make, @function
conc__ctx_make:
	.cfi_startproc
	ENDBR
	andq	$-16, %rdx
	leaq	-64(%rdx), %rax		/* the frame; after the switch's pops,
					   rsp = hi (16-byte aligned) */
	stmxcsr	8(%rdi)			/* c->mxcsr */
	fnstcw	12(%rdi)		/* c->fpcw */
	movw	$0, 14(%rdi)
	xorl	%ecx, %ecx
	movq	%rax, 0(%rax)		/* out: the value lands in this very
					   slot, where conc__ctx_start reads it */
	movq	%rcx, 8(%rax)		/* r15 */
	movq	%rcx, 16(%rax)		/* r14 */
	movq	%rcx, 24(%rax)		/* r13 */
	movq	%rcx, 32(%rax)		/* r12 */
	movq	%rcx, 40(%rax)		/* rbx */
	movq	%rcx, 48(%rax)		/* rbp: end of the frame-pointer chain */
	leaq	conc__ctx_start(%rip), %rcx
	movq	%rcx, 56(%rax)		/* return address */
	movq	%rax, (%rdi)		/* c->sp */
	ret
	.cfi_endproc
	.size	conc__ctx_make, .-conc__ctx_make

/* The first code of a fresh context: the switch stored its value in the
 * frame's out slot, which conc__ctx_make pointed at itself. */
	.p2align 4
	.type	conc__ctx_start, @function
conc__ctx_start:
	.cfi_startproc
	.cfi_undefined %rip
	ENDBR
	movq	-64(%rsp), %rdi		/* the value, stored in the out slot
					   just popped (the red zone: nothing
					   else writes there meanwhile) */
	call	conc__coro_entry@PLT
	ud2				/* conc__coro_entry never returns */
	.cfi_endproc
	.size	conc__ctx_start, .-conc__ctx_start

#if defined(__CET__) && (__CET__ & 1)
/* Indirect-branch tracking compatible (every entry point has endbr64).  Not
 * shadow-stack compatible: a context switch returns on another stack. */
	.section .note.gnu.property, "a"
	.p2align 3
	.long	4			/* name size */
	.long	16			/* descriptor size */
	.long	5			/* NT_GNU_PROPERTY_TYPE_0 */
	.asciz	"GNU"
	.long	0xc0000002		/* GNU_PROPERTY_X86_FEATURE_1_AND */
	.long	4
	.long	1			/* GNU_PROPERTY_X86_FEATURE_1_IBT */
	.p2align 3
#endif

/* The stacks stay non-executable. */
	.section .note.GNU-stack, "", @progbits
