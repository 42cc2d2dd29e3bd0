// The landing page: its words in the visitor's language (remembered from their profile on
// this device, else the browser's).
import { startLanguage } from "./ui.js";

startLanguage();
