package inference

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// Every process that loads ONNX Runtime used to leave an empty
// mat-debug-PID.log in $TMPDIR.
func TestInitORTLeavesNoDebugLog(t *testing.T) {
	if _, err := InitORT(""); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(os.TempDir(), fmt.Sprintf("mat-debug-%d.log", os.Getpid()))
	if _, err := os.Stat(p); err == nil {
		t.Fatalf("%s left behind", p)
	}
	// A log with something in it is the library's to keep.
	full := filepath.Join(t.TempDir(), "mat-debug-1.log")
	os.WriteFile(full, []byte("x"), 0o644)
	removeEmptyDebugLog(full)
	if _, err := os.Stat(full); err != nil {
		t.Fatalf("a non-empty log was removed: %v", err)
	}
}
