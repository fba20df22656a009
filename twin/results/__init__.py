"""From runs to a system: the matrix engine (engine), the results store (store), analysis and
recommendations (analysis), reports (report). The one application stage that joins the twin's runs
with calibration's predictions."""
