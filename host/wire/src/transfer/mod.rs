//! Dataset transfer to and from banks (built with the databank issue).
