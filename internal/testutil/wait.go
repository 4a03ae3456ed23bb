package testutil

import (
	"testing"
	"time"
)

// Eventually polls cond every 20 ms until it is true or timeout passes, then
// fails the test with msg. It is for waiting on asynchronous effects, never
// for asserting how fast something is.
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, msg string, args ...any) {
	t.Helper()
	if !WaitFor(timeout, cond) {
		t.Fatalf("timed out after %v: "+msg, append([]any{timeout}, args...)...)
	}
}

// WaitFor polls cond until it is true (returns true) or timeout passes.
func WaitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}
