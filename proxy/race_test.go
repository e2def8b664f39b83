//go:build race

package proxy

// raceDetector: the tests run under the race detector, which multiplies
// CPU time; a test that bounds CPU allows for it.
const raceDetector = true
