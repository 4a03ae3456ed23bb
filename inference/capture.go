package inference

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"gocv.io/x/gocv"
)

// ErrEndOfStream is returned by Capture.Frame when a video file has no
// more frames (a camera never ends).
var ErrEndOfStream = errors.New("end of video stream")

// Capture takes frames from a camera (a V4L2 device such as /dev/video0,
// or its index) or a video file through OpenCV's VideoCapture. Frames are
// handed out PNG-encoded so that they take the same path as any other
// image (decoder limits, quarantine, storage). Safe for concurrent use.
type Capture struct {
	mu     sync.Mutex
	source string
	vc     *gocv.VideoCapture
	frame  gocv.Mat
	live   bool
}

// OpenCapture opens source: "/dev/videoN" or "N" for a camera, anything
// else as a video file (or URL OpenCV understands).
func OpenCapture(source string) (*Capture, error) {
	var (
		vc   *gocv.VideoCapture
		err  error
		live bool
	)
	idx, isIndex := deviceIndex(source)
	if isIndex {
		vc, err = gocv.VideoCaptureDeviceWithAPI(idx, gocv.VideoCaptureV4L2)
		live = true
	} else {
		vc, err = gocv.VideoCaptureFile(source)
	}
	if err != nil {
		return nil, fmt.Errorf("open capture %s: %w", source, err)
	}
	if !vc.IsOpened() {
		vc.Close()
		return nil, fmt.Errorf("open capture %s: OpenCV could not open it (missing device, no permission, or unsupported codec)", source)
	}
	return &Capture{source: source, vc: vc, frame: gocv.NewMat(), live: live}, nil
}

func deviceIndex(source string) (int, bool) {
	s := strings.TrimPrefix(source, "/dev/video")
	if s == source && !isDigits(source) {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	return n, err == nil && n >= 0
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// Live reports whether the source is a camera (rather than a file).
func (c *Capture) Live() bool { return c.live }

// Frame reads the next frame and returns it PNG-encoded. For a camera it
// first drops the frames buffered since the previous call, so that a frame
// taken at an interval is current rather than stale.
func (c *Capture) Frame() ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.vc == nil {
		return nil, ErrClosed
	}
	if c.live {
		c.vc.Grab(4)
	}
	if !c.vc.Read(&c.frame) || c.frame.Empty() {
		if c.live {
			return nil, fmt.Errorf("capture %s: no frame (camera disconnected?)", c.source)
		}
		return nil, ErrEndOfStream
	}
	buf, err := gocv.IMEncode(gocv.PNGFileExt, c.frame)
	if err != nil {
		return nil, fmt.Errorf("capture %s: encode frame: %w", c.source, err)
	}
	defer buf.Close()
	return append([]byte(nil), buf.GetBytes()...), nil
}

// Close releases the device or file.
func (c *Capture) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.vc == nil {
		return nil
	}
	c.frame.Close()
	err := c.vc.Close()
	c.vc = nil
	return err
}
