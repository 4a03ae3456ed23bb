package inference

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	ort "github.com/yalue/onnxruntime_go"
)

// ORTLibEnv is the environment variable that overrides where the ONNX
// Runtime shared library is looked up.
const ORTLibEnv = "SCOPEWATCH_ORT_LIB"

const ortLibName = "libonnxruntime.so.1"

// ErrORTNotFound is returned when no ONNX Runtime shared library could be
// found in any of the places looked at.
var ErrORTNotFound = errors.New("ONNX Runtime shared library not found")

// ortArch is the folder name that .ci/setup.sh unpacks the library into.
func ortArch() string {
	switch runtime.GOARCH {
	case "arm64":
		return "arm64"
	default:
		return "x64"
	}
}

// ORTLibCandidates lists, in order of preference, the places where the ONNX
// Runtime shared library is looked for: the explicit path (flag or config)
// when given, $SCOPEWATCH_ORT_LIB, next to the installed binary, the
// module's .cache (what `make setup` fills) found by walking up from the
// working directory, and the system package location.
func ORTLibCandidates(explicit string) []string {
	var c []string
	if explicit != "" {
		c = append(c, explicit)
	}
	if env := os.Getenv(ORTLibEnv); env != "" {
		c = append(c, env)
	}
	if exe, err := os.Executable(); err == nil {
		c = append(c, filepath.Join(filepath.Dir(exe), "..", "lib", "scopewatch", ortLibName))
	}
	if root, ok := ModuleRoot(); ok {
		c = append(c, filepath.Join(root, ".cache", "onnxruntime", ortArch(), ortLibName))
	}
	c = append(c, filepath.Join("/usr/lib/scopewatch", ortLibName))
	return c
}

// FindORTLib returns the first existing candidate of ORTLibCandidates. An
// explicit path that does not exist is an error of its own: silently falling
// back to another library would hide a configuration mistake.
func FindORTLib(explicit string) (string, error) {
	if explicit != "" {
		if _, err := os.Stat(explicit); err != nil {
			return "", fmt.Errorf("%w: explicit path %s: %v", ErrORTNotFound, explicit, err)
		}
		return explicit, nil
	}
	cands := ORTLibCandidates("")
	for _, p := range cands {
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w; looked at:\n  %s\nrun `make setup` in the source tree, or pass --ort-lib PATH or set %s",
		ErrORTNotFound, strings.Join(cands, "\n  "), ORTLibEnv)
}

// ModuleRoot walks up from the working directory to the folder holding this
// project's go.mod, so that tools run from anywhere in the source tree find
// the fetched ONNX Runtime and the shipped default model.
func ModuleRoot() (string, bool) {
	dir, err := os.Getwd()
	if err != nil {
		return "", false
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.Contains(string(b), "module github.com/scopewatch/scopewatch") {
			return dir, true
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", false
		}
		dir = parent
	}
}

var ortEnv struct {
	mu   sync.Mutex
	path string // library the environment was initialised with
}

// InitORT loads the ONNX Runtime shared library (found with FindORTLib) and
// initialises the process-wide ORT environment. onnxruntime_go keeps a single
// global environment, so this happens once per process; later calls are
// no-ops returning the library in use. The environment is deliberately never
// destroyed: sessions may be created and closed many times (tests, model
// swaps) and tearing the library down under them would be unsafe.
func InitORT(explicit string) (string, error) {
	ortEnv.mu.Lock()
	defer ortEnv.mu.Unlock()
	if ort.IsInitialized() {
		return ortEnv.path, nil
	}
	lib, err := FindORTLib(explicit)
	if err != nil {
		return "", err
	}
	ort.SetSharedLibraryPath(lib)
	if err := ort.InitializeEnvironment(ort.WithLogLevelError()); err != nil {
		return "", fmt.Errorf("initialise ONNX Runtime from %s: %w", lib, err)
	}
	// A lab device reports to nobody.
	if err := ort.DisableTelemetry(); err != nil {
		return "", fmt.Errorf("ONNX Runtime from %s: %w", lib, err)
	}
	// Creating the environment leaves an empty mat-debug-PID.log in
	// $TMPDIR, whatever the telemetry setting; one per process piles up.
	removeEmptyDebugLog(filepath.Join(os.TempDir(), fmt.Sprintf("mat-debug-%d.log", os.Getpid())))
	ortEnv.path = lib
	return lib, nil
}

// removeEmptyDebugLog removes path if it is an empty regular file: the
// library's, by its pid in the name; a log with something in it is kept.
func removeEmptyDebugLog(path string) {
	if st, err := os.Lstat(path); err == nil && st.Mode().IsRegular() && st.Size() == 0 {
		os.Remove(path)
	}
}
