"""voicescreen.models"""
